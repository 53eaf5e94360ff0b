import { describe, expect, it } from 'vitest';
import { EmaAccumulator, ema, forLogScale } from '../src/lib/ema';

describe('ema', () => {
  it('is the identity at 0', () => {
    expect(ema([3, 1, 2], 0)).toEqual([3, 1, 2]);
  });

  it('is debiased: the first value is kept, a constant stays constant', () => {
    const out = ema([2, 2, 2, 2], 0.9);
    for (const v of out) expect(v).toBeCloseTo(2, 12);
  });

  it('matches the TensorBoard formula', () => {
    const [a, b] = ema([1, 3], 0.5) as number[];
    expect(a).toBeCloseTo(1);
    // last = 0.5*0.5 + 0.5*3 = 1.75; weight = 0.75
    expect(b).toBeCloseTo(1.75 / 0.75);
  });

  it('skips NaN and nulls without poisoning later values', () => {
    const out = ema([1, NaN, null, 1], 0.6);
    expect(out[1]).toBeNull();
    expect(out[2]).toBeNull();
    expect(out[3]).toBeCloseTo(1);
  });

  it('incremental version agrees with the batch one', () => {
    const xs = [5, 4.5, 4.8, 3.9, 3.7, 3.8];
    const acc = new EmaAccumulator(0.8);
    expect(xs.map((x) => acc.push(x))).toEqual(ema(xs, 0.8));
  });

  it('drops non-positive values for log scale', () => {
    expect(forLogScale([1, 0, -2, null, Infinity, 0.5])).toEqual([1, null, null, null, null, 0.5]);
  });
});

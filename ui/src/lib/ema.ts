// TensorBoard-style smoothing: an exponential moving average with bias
// correction, so the first points are not pulled towards zero.

/**
 * Smooths `values` with weight `alpha` in [0, 1) (0 = raw). Non-finite values
 * (NaN/inf losses) are passed through as null and do not poison the average.
 */
export function ema(values: readonly (number | null)[], alpha: number): (number | null)[] {
  const a = Math.min(Math.max(alpha, 0), 0.999);
  let last = 0;
  let weight = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return null;
    last = last * a + (1 - a) * v;
    weight = weight * a + (1 - a);
    return last / weight;
  });
}

/** Incremental version for live data: feed one value at a time. */
export class EmaAccumulator {
  #last = 0;
  #weight = 0;
  constructor(public alpha: number) {}
  push(v: number): number | null {
    if (!Number.isFinite(v)) return null;
    const a = Math.min(Math.max(this.alpha, 0), 0.999);
    this.#last = this.#last * a + (1 - a) * v;
    this.#weight = this.#weight * a + (1 - a);
    return this.#last / this.#weight;
  }
}

/** Values for a log-scale axis: non-positive and non-finite values become null. */
export function forLogScale(values: readonly (number | null)[]): (number | null)[] {
  return values.map((v) => (v !== null && Number.isFinite(v) && v > 0 ? v : null));
}

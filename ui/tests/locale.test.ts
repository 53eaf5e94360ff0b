import { describe, expect, it, vi } from 'vitest';

describe('locale guard (WebKitGTK under LANG=C.UTF-8 reports navigator.language "C")', () => {
  it('replaces an unusable language before uPlot reads it', async () => {
    const original = Object.getOwnPropertyDescriptor(navigator, 'language');
    Object.defineProperty(navigator, 'language', { get: () => 'C', configurable: true });
    Object.defineProperty(navigator, 'languages', { get: () => ['C'], configurable: true });
    expect(() => new Intl.NumberFormat(navigator.language)).toThrow(RangeError);
    vi.resetModules();
    const { LOCALE } = await import('../src/lib/locale');
    expect(LOCALE).toBe('en-US');
    expect(navigator.language).toBe('en-US');
    expect(() => new Intl.NumberFormat(navigator.language)).not.toThrow();
    const { fmtCount } = await import('../src/lib/format');
    expect(fmtCount(12345)).toBe('12,345');
    if (original) Object.defineProperty(navigator, 'language', original);
  });

  it('keeps a valid language', async () => {
    Object.defineProperty(navigator, 'language', { get: () => 'de-DE', configurable: true });
    vi.resetModules();
    const { LOCALE } = await import('../src/lib/locale');
    expect(LOCALE).toBe('de-DE');
  });
});

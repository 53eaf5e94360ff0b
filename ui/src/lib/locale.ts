// WebKitGTK under LANG=C.UTF-8 reports navigator.language = "C", and
// `new Intl.NumberFormat("C")` throws. uPlot does exactly that at module load,
// which leaves a blank window (docs/gui.md §1.4). main.ts imports this module
// first, so the patch is in place before uPlot is evaluated.

function usable(tag: string | undefined): tag is string {
  if (!tag) return false;
  try {
    new Intl.NumberFormat(tag);
    return true;
  } catch {
    return false;
  }
}

export const LOCALE: string = (() => {
  if (typeof navigator === 'undefined') return 'en-US';
  if (usable(navigator.language)) return navigator.language;
  const fallback = navigator.languages?.find(usable) ?? 'en-US';
  try {
    Object.defineProperty(navigator, 'language', { get: () => fallback, configurable: true });
    Object.defineProperty(navigator, 'languages', { get: () => [fallback], configurable: true });
  } catch {
    // Not patchable: uPlot will fail, but our own formatting still works.
  }
  return fallback;
})();

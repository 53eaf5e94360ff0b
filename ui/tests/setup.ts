import { afterEach, vi } from 'vitest';
import { clearMocks } from '@tauri-apps/api/mocks';
import { cleanup } from '@testing-library/svelte';

// happy-dom has no canvas 2D context, and uPlot throws without one
// (docs/gui.md §2.2): stub it and record what the charts receive.
vi.mock('uplot', () => {
  class FakePlot {
    static instances: FakePlot[] = [];
    data: unknown[];
    constructor(
      public opts: { series: { label?: string }[] },
      data: unknown[],
    ) {
      this.data = data;
      FakePlot.instances.push(this);
    }
    setData(d: unknown[]): void {
      this.data = d;
    }
    setSize(): void {}
    destroy(): void {
      FakePlot.instances = FakePlot.instances.filter((p) => p !== this);
    }
  }
  return { default: FakePlot };
});

// Tests need crypto.getRandomValues for mockIPC callback ids.
if (!globalThis.crypto?.getRandomValues) {
  Object.defineProperty(globalThis, 'crypto', { value: (await import('node:crypto')).webcrypto });
}

afterEach(async () => {
  cleanup();
  clearMocks();
  const { app } = await import('../src/lib/store.svelte');
  app.reset();
  vi.useRealTimers();
});

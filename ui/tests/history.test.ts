import { describe, expect, it } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import uPlot from 'uplot';
import History from '../src/screens/History.svelte';
import { app } from '../src/lib/store.svelte';
import { defaultConfig } from '../src/lib/config';
import type { RunSummary } from '../src/lib/api';
import { flush, ipc, step } from './helpers';

function run(id: string, over: Partial<RunSummary> = {}): RunSummary {
  return {
    id,
    name: id,
    dir: `/runs/${id}`,
    status: 'completed',
    startedAt: '2026-11-25T10:00:00Z',
    durationSecs: 3600,
    step: 100,
    totalSteps: 100,
    bestValLoss: 3.21,
    finalLoss: 3.1,
    config: { ...defaultConfig(), model_path: '/m', output_dir: '/runs', audio_dir: '/a', transcript_dir: '/t', lora_r: 16 },
    checkpoints: [{ step: 50, path: `/runs/${id}/ckpt-50` }, { step: 100, path: `/runs/${id}/ckpt-100` }],
    ...over,
  };
}

const metrics = (k: number) => ({
  steps: [1, 2, 3].map((i) => (step(i, { loss: k + i }) as { data: ReturnType<typeof step>['data'] }).data),
  validation: [{ step: 3, loss: k, semanticLoss: 1, acousticLoss: 1 }],
  samples: [],
});

describe('History screen', () => {
  it('lists runs with status, duration and best validation loss', async () => {
    ipc({ list_runs: () => [run('a'), run('b', { status: 'failed', bestValLoss: null })] });
    render(History);
    await flush();
    const rows = screen.getByTestId('history-table').querySelectorAll('tbody tr');
    expect(rows).toHaveLength(2);
    expect(rows[0]?.textContent).toContain('1h 00m');
    expect(rows[0]?.textContent).toContain('3.21');
    expect(rows[1]?.textContent).toContain('failed');
  });

  it('duplicates a run into the Parameters form', async () => {
    ipc({ list_runs: () => [run('a')] });
    render(History);
    await flush();
    await fireEvent.click(screen.getByRole('button', { name: 'Duplicate…' }));
    expect(app.tab).toBe('parameters');
    expect(app.config.lora_r).toBe(16);
    expect(app.config.resume_from).toBeNull();
  });

  it('resumes from the last checkpoint', async () => {
    ipc({ list_runs: () => [run('a')] });
    render(History);
    await flush();
    await fireEvent.click(screen.getByRole('button', { name: 'Resume' }));
    expect(app.config.resume_from).toBe('/runs/a/ckpt-100');
  });

  it('compares the loss curves of two runs', async () => {
    const log = ipc({ list_runs: () => [run('a'), run('b', { config: { ...run('b').config, lora_r: 32, epochs: 9, target_layers: { backbone: { some: [0, 1, 2, 3] }, decoder: 'none' } } }), run('c')], run_metrics: (a) => metrics(a.runId === 'a' ? 1 : 2) });
    render(History);
    await flush();
    const compare = screen.getByRole('button', { name: /Compare selected/ }) as HTMLButtonElement;
    expect(compare.disabled).toBe(true);
    await fireEvent.click(screen.getByLabelText('Select a'));
    await fireEvent.click(screen.getByLabelText('Select b'));
    expect(compare.disabled).toBe(false);
    await fireEvent.click(compare);
    await flush();
    expect(log.of('run_metrics').map((a) => a.runId)).toEqual(['a', 'b']);
    expect(screen.getByTestId('compare')).toBeTruthy();
    const plots = (uPlot as unknown as { instances: { opts: { series: { label?: string }[] }; data: unknown[][] }[] }).instances;
    const val = plots.find((p) => p.data[0]?.length === 1);
    expect(val?.opts.series.map((s) => s.label)).toEqual(['step', 'a', 'b']);
    expect(val?.data.slice(1)).toEqual([[1], [2]]);
    const diff = screen.getByTestId('config-diff').textContent ?? '';
    expect(diff).toContain('lora_r');
    expect(diff).toContain('32');
    expect(diff).toContain('epochs');
    expect(diff).not.toContain('learning_rate');
    expect(diff).toContain('target_layersallbackbone:0-3,decoder:none');
  });

  it('reveals the folder and exports the adapter into a new folder', async () => {
    const log = ipc({
      list_runs: () => [run('a')],
      reveal_path: () => null,
      'plugin:dialog|open': () => '/exports',
      export_adapter: (a) => `${a.dest}/a`,
    });
    render(History);
    await flush();
    const row = screen.getByText('a', { selector: 'b' }).closest('tr') as HTMLElement;
    await fireEvent.click(within(row).getByRole('button', { name: 'Reveal' }));
    await fireEvent.click(within(row).getByRole('button', { name: 'Export adapter…' }));
    await flush();
    expect(log.of('reveal_path')[0]).toEqual({ path: '/runs/a' });
    expect((log.of('plugin:dialog|open')[0]?.options as { directory: boolean }).directory).toBe(true);
    expect(log.of('export_adapter')[0]).toEqual({ runId: 'a', checkpoint: null, dest: '/exports' });
    expect(app.notices.at(-1)?.text).toBe('Adapter exported to /exports/a/');
  });

  it('shows why an export was refused', async () => {
    ipc({
      list_runs: () => [run('a')],
      'plugin:dialog|open': () => '/exports',
      export_adapter: () => Promise.reject({ kind: 'alreadyExists', message: '/exports/a already exists; choose another folder or move it away first' }),
    });
    render(History);
    await flush();
    const row = screen.getByText('a', { selector: 'b' }).closest('tr') as HTMLElement;
    await fireEvent.click(within(row).getByRole('button', { name: 'Export adapter…' }));
    await flush();
    const notice = app.notices.at(-1);
    expect(notice?.text).toBe('Export failed: /exports/a already exists; choose another folder or move it away first');
    expect(notice?.level).toBe('error');
  });

  it("shows a finished run's validation with each speaker's loss, from run_metrics", async () => {
    const sp = (speaker: string, id: number, loss: number | null) => ({ speaker, id, loss, semanticLoss: 1, acousticLoss: 1, examples: 2 });
    const log = ipc({
      list_runs: () => [run('two'), run('one')],
      run_metrics: (a) => ({
        steps: [],
        validation:
          a.runId === 'two'
            ? [
                { step: 2, loss: 5, semanticLoss: 3, acousticLoss: 2, speakers: [sp('alice', 0, 5.5), sp('bob', 7, 4.5)] },
                { step: 4, loss: 4, semanticLoss: 2, acousticLoss: 2, speakers: [sp('alice', 0, 3.25), sp('bob', 7, null)] },
              ]
            : [{ step: 4, loss: 4, semanticLoss: 2, acousticLoss: 2 }],
        samples: [],
        voiceSetup: null,
        voice: [],
      }),
    });
    render(History);
    await flush();
    const rowOf = (id: string) => screen.getByText(id, { selector: 'b' }).closest('tr') as HTMLElement;
    await fireEvent.click(within(rowOf('two')).getByRole('button', { name: 'Validation' }));
    await flush();
    expect(log.of('run_metrics')).toEqual([{ runId: 'two' }]);
    const rows = [...screen.getByTestId('history-speaker-validation').querySelectorAll('tbody tr')].map((r) =>
      [...r.querySelectorAll('td')].map((td) => (td.textContent ?? '').replace(/\s+/g, ' ').trim()).join(' | '),
    );
    // Last pass: alice 3.25 at step 4, bob's loss not finite there (best 4.5 at step 2).
    expect(rows).toEqual(['alice | 0 | 2 | 3.25 (step 4) | 3.25 (step 4)', 'bob | 7 | 2 | — (step 4) | 4.5 (step 2)']);
    await new Promise((r) => setTimeout(r, 30)); // rAF-throttled setData
    const plot = (uPlot as unknown as { instances: { opts: { series: { label?: string }[] }; data: unknown[][] }[] }).instances.find((p) =>
      p.opts.series.some((x) => x.label === 'val alice'),
    );
    expect(plot?.opts.series.map((x) => x.label)).toEqual(['step', 'val loss', 'val alice', 'val bob']);
    expect(plot?.data).toEqual([[2, 4], [5, 4], [5.5, 3.25], [4.5, null]]);

    // A one-speaker run: its validation chart, no speaker table.
    await fireEvent.click(within(rowOf('one')).getByRole('button', { name: 'Validation' }));
    await flush();
    expect(screen.getByText('Validation of one')).toBeTruthy();
    expect(screen.queryByTestId('history-speaker-validation')).toBeNull();
  });

  it('does nothing when the folder dialog is cancelled', async () => {
    const log = ipc({ list_runs: () => [run('a')], 'plugin:dialog|open': () => null, export_adapter: () => '/x' });
    render(History);
    await flush();
    const row = screen.getByText('a', { selector: 'b' }).closest('tr') as HTMLElement;
    await fireEvent.click(within(row).getByRole('button', { name: 'Export adapter…' }));
    await flush();
    expect(log.of('export_adapter')).toHaveLength(0);
  });
});

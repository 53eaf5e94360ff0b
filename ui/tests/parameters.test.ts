import { describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, within } from '@testing-library/svelte';
import Parameters from '../src/screens/Parameters.svelte';
import { app } from '../src/lib/store.svelte';
import { flush, ipc, scanFixture } from './helpers';

function fill(): void {
  app.config.model_path = '/models/csm 1b';
  app.config.output_dir = '/runs/one';
  app.config.audio_dir = '/d/audio';
  app.config.transcript_dir = '/d/transcripts';
}

const input = (label: RegExp) => screen.getByLabelText(label, { selector: 'input' }) as HTMLInputElement;

describe('Parameters screen', () => {
  it('shows basic fields with flag tooltips, advanced on demand', async () => {
    ipc({ estimate_run: () => ({ secsPerStep: null, peakMemoryBytes: null }) });
    render(Parameters);
    expect(input(/^LoRA rank/)).toBeTruthy();
    expect(screen.getByRole('button', { name: /--lora-r: Rank of the low-rank update/ })).toBeTruthy();
    expect(screen.queryByLabelText(/^Gradient accumulation/)).toBeNull();
    await fireEvent.click(screen.getByLabelText('Show advanced'));
    expect(input(/^Gradient accumulation/)).toBeTruthy();
    expect(screen.getByRole('button', { name: /--decoder-fraction: .*1\/16/ })).toBeTruthy();
  });

  it('filters by search, including flag names', async () => {
    ipc({});
    render(Parameters);
    await fireEvent.input(screen.getByLabelText('Search parameters'), { target: { value: '--warmup' } });
    expect(input(/^Warm-up steps/)).toBeTruthy();
    expect(screen.queryByLabelText(/^LoRA rank/)).toBeNull();
  });

  it('validates inline and blocks Start', async () => {
    ipc({ estimate_run: () => ({ secsPerStep: 1, peakMemoryBytes: null }) });
    fill();
    render(Parameters);
    const start = screen.getByRole('button', { name: 'Start training' }) as HTMLButtonElement;
    expect(start.disabled).toBe(false);
    const lr = input(/^Learning rate/);
    await fireEvent.input(lr, { target: { value: '2e-' } });
    expect(lr.getAttribute('aria-invalid')).toBe('true');
    expect(screen.getByRole('alert').textContent).toMatch(/number/);
    expect(start.disabled).toBe(true);
    await fireEvent.input(lr, { target: { value: '3e-4' } });
    expect(app.config.learning_rate).toBe(3e-4);
    expect(lr.value).toBe('3e-4'); // what the user typed stays
    expect(start.disabled).toBe(false);
    await fireEvent.input(input(/^Batch size/), { target: { value: '0' } });
    expect(screen.getByRole('alert').textContent).toMatch(/≥ 1/);
  });

  it('blocks Start when voice scores are on and the dataset has several speakers', async () => {
    ipc({ estimate_run: () => ({ secsPerStep: 1, peakMemoryBytes: null }) });
    fill();
    app.config.voice = { speaker_encoder: 'speaker-encoder', whisper_model: null, prompts: ['Hello there.'] };
    app.speakers = {
      layout: 'speakerFolders',
      speakersFile: '/d/speakers.json',
      fileExists: false,
      file: null,
      speakers: [{ name: 'alice', id: 0 }, { name: 'bob', id: 7 }],
      recordings: [],
      error: null,
    };
    render(Parameters);
    const start = screen.getByRole('button', { name: 'Start training' }) as HTMLButtonElement;
    expect(start.disabled).toBe(true);
    expect(screen.getByRole('alert').textContent).toMatch(/this dataset has 2 speakers \(alice, bob\): turn voice scores off/);
    await fireEvent.click(document.querySelector('#f-voice') as HTMLInputElement);
    await flush();
    expect(app.config.voice).toBeNull();
    expect(start.disabled).toBe(false);
  });

  it('applies presets and shows the live command', async () => {
    ipc({});
    fill();
    render(Parameters);
    const cmd = screen.getByTestId('command');
    expect(cmd.textContent).toBe(
      "csm finetune-lora --audio-dir /d/audio --transcript-dir /d/transcripts --model-path '/models/csm 1b' --output-dir /runs/one",
    );
    await fireEvent.click(screen.getByRole('button', { name: 'Best quality' }));
    expect(app.config.lora_r).toBe(32);
    expect(input(/^LoRA rank/).value).toBe('32');
    expect(screen.getByRole('button', { name: 'Best quality' }).getAttribute('aria-pressed')).toBe('true');
    expect(cmd.textContent).toContain('--lora-r 32');
    expect(cmd.textContent).toContain('--target-modules q_proj k_proj v_proj o_proj gate_proj up_proj down_proj');
    // Best quality turns samples on and fills the prompt, so it stays valid.
    expect(input(/^Sample prompt/).disabled).toBe(false);
    expect(input(/^Sample prompt/).value).toMatch(/fine-tuned voice/);
    expect(screen.queryByRole('alert')).toBeNull();
    await fireEvent.input(input(/^Sample prompt/), { target: { value: ' ' } });
    expect(screen.getByText('Needed when samples are generated')).toBeTruthy();
    await fireEvent.click(screen.getByRole('button', { name: 'Quick test' }));
    expect(input(/^Sample prompt/).disabled).toBe(true);
  });

  it('copies the command to the clipboard', async () => {
    ipc({});
    fill();
    const writeText = vi.fn(() => Promise.resolve());
    Object.defineProperty(navigator, 'clipboard', { value: { writeText }, configurable: true });
    render(Parameters);
    await fireEvent.click(screen.getByRole('button', { name: 'Copy as command' }));
    expect(writeText).toHaveBeenCalledWith(expect.stringMatching(/^csm finetune-lora --audio-dir/));
    await flush();
    expect(screen.getByRole('button', { name: 'Copied' })).toBeTruthy();
  });

  it('takes target layers as text and keeps what is typed until it parses', async () => {
    ipc({});
    fill();
    render(Parameters);
    await fireEvent.click(screen.getByLabelText('Show advanced'));
    const layers = input(/^Target layers/);
    expect(layers.value).toBe('all');
    await fireEvent.input(layers, { target: { value: 'backbone:' } });
    expect(layers.getAttribute('aria-invalid')).toBe('true');
    expect(app.config.target_layers).toEqual({ backbone: 'all', decoder: 'all' });
    const start = screen.getByRole('button', { name: 'Start training' }) as HTMLButtonElement;
    expect(start.disabled).toBe(true);
    await fireEvent.input(layers, { target: { value: 'backbone:0-3' } });
    expect(app.config.target_layers).toEqual({ backbone: { some: [0, 1, 2, 3] }, decoder: 'none' });
    expect(layers.value).toBe('backbone:0-3');
    expect(start.disabled).toBe(false);
    await fireEvent.blur(layers);
    expect(layers.value).toBe('backbone:0-3,decoder:none');
    expect(screen.getByTestId('command').textContent).toContain('--target-layers backbone:0-3,decoder:none');
  });

  it('has the segmenting settings under Advanced, with their flags', async () => {
    ipc({});
    fill();
    render(Parameters);
    expect(screen.queryByLabelText(/^Trim silence/, { selector: 'input' })).toBeNull();
    await fireEvent.click(screen.getByLabelText('Show advanced'));
    const trim = input(/^Trim silence/);
    expect(trim.checked).toBe(true);
    expect(screen.getByRole('button', { name: /--no-trim-silence: Trim the leading and trailing silence/ })).toBeTruthy();
    await fireEvent.click(trim);
    expect(app.config.trim_silence).toBe(false);
    await fireEvent.input(input(/^Target utterance/), { target: { value: '14' } });
    expect(screen.getByRole('alert').textContent).toMatch(/between the min and max/);
    await fireEvent.input(input(/^Max utterance/), { target: { value: '15' } });
    expect(screen.queryByRole('alert')).toBeNull();
    const cmd = screen.getByTestId('command').textContent ?? '';
    expect(cmd).toContain('--no-trim-silence');
    expect(cmd).toContain('--target-utterance-secs 14 --max-utterance-secs 15');
  });

  it('toggles target modules in canonical order', async () => {
    ipc({});
    render(Parameters);
    const group = screen.getByRole('group', { name: /Target modules/ });
    await fireEvent.click(within(group).getByLabelText('o_proj'));
    await fireEvent.click(within(group).getByLabelText('k_proj'));
    expect(app.config.target_modules).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj']);
    await fireEvent.click(within(group).getByLabelText('q_proj'));
    expect(app.config.target_modules).toEqual(['k_proj', 'v_proj', 'o_proj']);
  });

  it('derives steps and time from the dataset and the backend estimate', async () => {
    vi.useFakeTimers();
    const log = ipc({ estimate_run: () => ({ secsPerStep: 2, peakMemoryBytes: 6 * 1024 ** 3 }) });
    fill();
    app.dataset = scanFixture(); // 11 usable -> 10 train / 1 val
    render(Parameters);
    expect(screen.getByTestId('steps-per-epoch').textContent).toBe('5');
    expect(screen.getByTestId('total-steps').textContent).toBe('25');
    await vi.advanceTimersByTimeAsync(500);
    await flush();
    expect(log.of('estimate_run')).toHaveLength(1);
    expect(screen.getByTestId('eta').textContent).toBe('50s');
    expect(screen.getByTestId('derived').textContent).toContain('6.0 GB');
  });

  it('imports a config JSON through the dialog', async () => {
    const log = ipc({
      'plugin:dialog|open': () => '/cfg/run.json',
      read_config_file: () => ({ model_path: '/m', lora_r: 12, extra: 1 }),
    });
    render(Parameters);
    await fireEvent.click(screen.getByRole('button', { name: 'Import JSON…' }));
    await flush();
    expect(log.of('read_config_file')[0]).toEqual({ path: '/cfg/run.json' });
    expect(app.config.lora_r).toBe(12);
    expect(app.config.model_path).toBe('/m');
    expect(input(/^LoRA rank/).value).toBe('12');
    expect(app.notices.at(-1)?.text).toMatch(/ignored unknown keys: extra/);
  });

  it('reports an invalid imported config and keeps the current one', async () => {
    ipc({ 'plugin:dialog|open': () => '/cfg/bad.json', read_config_file: () => ({ save_mode: 'everything' }) });
    render(Parameters);
    await fireEvent.click(screen.getByRole('button', { name: 'Import JSON…' }));
    await flush();
    expect(app.config.save_mode).toBe('lora');
    expect(app.notices.at(-1)).toMatchObject({ level: 'error' });
    expect(app.notices.at(-1)?.text).toMatch(/save_mode/);
  });

  it('exports the config JSON with snake_case keys', async () => {
    const log = ipc({ 'plugin:dialog|save': () => '/cfg/out.json', write_config_file: () => null });
    fill();
    app.config.lora_r = 24;
    render(Parameters);
    await fireEvent.click(screen.getByRole('button', { name: 'Export JSON…' }));
    await flush();
    const args = log.of('write_config_file')[0] as { path: string; config: Record<string, unknown> };
    expect(args.path).toBe('/cfg/out.json');
    expect(args.config).toMatchObject({ lora_r: 24, learning_rate: 2e-4, model_path: '/models/csm 1b' });
  });

  it('browses for a path with the dialog plugin', async () => {
    const log = ipc({ 'plugin:dialog|open': () => '/picked/out' });
    render(Parameters);
    const out = input(/^Output folder/);
    const browse = within(out.parentElement as HTMLElement).getByRole('button', { name: 'Browse…' });
    await fireEvent.click(browse);
    await flush();
    expect(log.of('plugin:dialog|open')[0]).toMatchObject({ options: { directory: true } });
    expect(app.config.output_dir).toBe('/picked/out');
  });
});

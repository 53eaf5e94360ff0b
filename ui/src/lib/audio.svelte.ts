// Playback through the backend (cpal). One clip plays at a time.
import * as api from './api';
import type { IpcError } from './api';

class Player {
  /** Path currently playing, null when stopped. */
  playing = $state<string | null>(null);
  error = $state<IpcError | null>(null);
  #timer: ReturnType<typeof setTimeout> | undefined;

  async play(path: string, deviceId: string | null): Promise<void> {
    clearTimeout(this.#timer);
    this.error = null;
    try {
      const { durationSecs } = await api.playAudio(path, deviceId);
      this.playing = path;
      this.#timer = setTimeout(() => {
        if (this.playing === path) this.playing = null;
      }, durationSecs * 1000);
    } catch (e) {
      this.playing = null;
      this.error = api.toIpcError(e);
    }
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.playing = null;
    try {
      await api.stopAudio();
    } catch (e) {
      this.error = api.toIpcError(e);
    }
  }

  toggle(path: string, deviceId: string | null): Promise<void> {
    return this.playing === path ? this.stop() : this.play(path, deviceId);
  }

  /** Message for the UI, with a clear one when there is no output device. */
  get message(): string | null {
    if (!this.error) return null;
    if (this.error.kind === 'noAudioDevice') {
      return 'No audio output device is available. Connect speakers or headphones, or pick another device.';
    }
    return `Playback failed: ${this.error.message}`;
  }
}

export const player = new Player();

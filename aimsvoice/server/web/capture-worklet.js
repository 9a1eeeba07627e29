// The microphone, on the audio rendering thread: whatever the AudioContext's rate, out come
// 80 ms frames of 16-bit little-endian PCM at 24 kHz (the model's frame; /ws takes them as they
// are), each with its level. Nothing here waits or logs; a frame is one transferred buffer.

import { Resampler } from "./resampler.js";

const RATE = 24000;
const FRAME = 1920; // samples per 80 ms at 24 kHz

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = sampleRate === RATE ? null : new Resampler(sampleRate, RATE);
    this.frame = new Float32Array(FRAME);
    this.fill = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const pcm = this.resampler ? this.resampler.process(channels[0]) : channels[0];
      for (let i = 0; i < pcm.length; i++) {
        this.frame[this.fill++] = pcm[i];
        if (this.fill === FRAME) this.emit();
      }
    }
    return true;
  }

  emit() {
    const bytes = new ArrayBuffer(2 * FRAME);
    const view = new DataView(bytes);
    let energy = 0;
    let peak = 0;
    for (let i = 0; i < FRAME; i++) {
      const x = Math.max(-1, Math.min(1, this.frame[i]));
      energy += x * x;
      peak = Math.max(peak, Math.abs(x));
      view.setInt16(2 * i, x < 0 ? Math.round(x * 32768) : Math.round(x * 32767), true);
    }
    this.fill = 0;
    this.port.postMessage({ pcm: bytes, rms: Math.sqrt(energy / FRAME), peak }, [bytes]);
  }
}

registerProcessor("aimsvoice-capture", Capture);

// The agent's voice, on the audio rendering thread: 16-bit PCM at 24 kHz from the page (one
// message per frame the server sent), resampled to the AudioContext's rate when it is not 24 kHz,
// through the jitter buffer (jitter.js) to the speaker. A few times a second it tells the page
// what it played, dropped and held, and the output level.

import { JitterBuffer } from "./jitter.js";
import { Resampler } from "./resampler.js";

const RATE = 24000;
const REPORT_EVERY = 16; // render quanta between reports: ~85 ms at 24 kHz

class Playback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    const samples = (ms) => Math.round((ms / 1000) * sampleRate);
    this.jitter = new JitterBuffer({
      lead: samples(o.leadMs ?? 60),
      max: samples(o.maxMs ?? 240),
      window: samples(o.windowMs ?? 1000),
      slack: samples(o.slackMs ?? 20),
    });
    this.resampler = sampleRate === RATE ? null : new Resampler(RATE, sampleRate);
    this.quanta = 0;
    this.energy = 0;
    this.count = 0;
    this.peak = 0;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    if (message.reset) {
      this.jitter.reset();
      return;
    }
    const view = new DataView(message.pcm);
    const n = view.byteLength >> 1;
    const pcm = new Float32Array(n);
    for (let i = 0; i < n; i++) pcm[i] = view.getInt16(2 * i, true) / 32768;
    this.jitter.push(this.resampler ? this.resampler.process(pcm) : pcm);
  }

  process(inputs, outputs) {
    const channels = outputs[0];
    const out = channels[0];
    this.jitter.pull(out);
    for (let c = 1; c < channels.length; c++) channels[c].set(out);
    for (let i = 0; i < out.length; i++) {
      this.energy += out[i] * out[i];
      this.peak = Math.max(this.peak, Math.abs(out[i]));
    }
    this.count += out.length;
    if (++this.quanta >= REPORT_EVERY) this.report();
    return true;
  }

  report() {
    const j = this.jitter;
    this.port.postMessage({
      played: Math.round((j.played * RATE) / sampleRate), // samples at 24 kHz
      underruns: j.underruns,
      dropped: Math.round((j.dropped * RATE) / sampleRate),
      bufferedMs: (1000 * j.depth) / sampleRate,
      rms: Math.sqrt(this.energy / Math.max(this.count, 1)),
      peak: this.peak,
    });
    this.quanta = 0;
    this.energy = 0;
    this.count = 0;
    this.peak = 0;
  }
}

registerProcessor("aimsvoice-playback", Playback);

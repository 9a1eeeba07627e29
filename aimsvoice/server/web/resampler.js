// A streaming resampler for the AudioWorklets, used only where the browser will not run an
// AudioContext at 24 kHz (then the microphone is resampled to 24 kHz here, and the agent's
// 24 kHz audio to the context's rate). Where it will (Chrome, Safari), no sample passes here.
//
// Linear interpolation, after a windowed-sinc low-pass when going down in rate (no aliasing of
// what lies above the new Nyquist). Plain arrays, no allocation once warm: it runs on the
// audio rendering thread.

const TAPS = 32;

export class Resampler {
  /** inRate, outRate: Hz. */
  constructor(inRate, outRate) {
    this.step = inRate / outRate; // input samples per output sample
    this.pos = 1; // the next output sample's position in [last, ...input]: 1 is input[0]
    this.last = 0;
    this.filter = this.step > 1 ? lowPass(TAPS, 0.45 / this.step) : null;
    this.history = new Float32Array(TAPS - 1);
    this.work = new Float32Array(0);
    this.filtered = new Float32Array(0);
    this.out = new Float32Array(0);
  }

  /** Float32Array at inRate -> Float32Array at outRate (a view, valid until the next call). */
  process(input) {
    const x = this.filter ? this.lowPassed(input) : input;
    const n = x.length;
    const room = Math.ceil(n / this.step) + 2;
    if (this.out.length < room) this.out = new Float32Array(room);
    let k = 0;
    let pos = this.pos;
    while (pos < n + 1 && k < room) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = i === 0 ? this.last : x[i - 1];
      const b = i < n ? x[i] : a;
      if (i >= n && frac > 0) break; // needs a sample not here yet
      this.out[k++] = a + (b - a) * frac;
      pos += this.step;
    }
    this.pos = pos - n;
    if (n > 0) this.last = x[n - 1];
    return this.out.subarray(0, k);
  }

  lowPassed(input) {
    const h = this.history.length;
    const n = input.length;
    if (this.work.length < h + n) {
      this.work = new Float32Array(h + n);
      this.filtered = new Float32Array(n);
    }
    this.work.set(this.history, 0);
    this.work.set(input, h);
    const taps = this.filter;
    for (let i = 0; i < n; i++) {
      let acc = 0;
      for (let j = 0; j < taps.length; j++) acc += taps[j] * this.work[i + j];
      this.filtered[i] = acc;
    }
    this.history.set(this.work.subarray(n, n + h));
    return this.filtered.subarray(0, n);
  }
}

/** A windowed-sinc (Blackman) low-pass: cutoff in cycles per sample, unit gain at DC. */
function lowPass(taps, cutoff) {
  const h = new Float32Array(taps);
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const t = i - mid;
    const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < taps; i++) h[i] /= sum;
  return h;
}

"""When the user starts speaking and when their turn ends, from the VAD's speech probabilities (pure).

The cascade is half duplex: it answers once the user's turn has ended, and stops talking when
the user starts. Both decisions come from Silero's probability of speech in each 32 ms window
of the echo-cancelled input:

- Speech starts after `start_s` of windows at or above `on_threshold` in a row (two windows,
  64 ms: a click is not speech, and the agent still stops within two 80 ms frames of a barge-in).
- The turn ends after `end_silence_s` below `off_threshold` (hysteresis: a word's quiet
  consonants stay inside it). 0.6 s is the usual endpointing delay of voice pipelines: shorter
  takes the turn in the user's pauses, longer makes every answer later.
- Speech that spanned less than `min_turn_s` is a noise (a cough, a knock): no turn.

`TurnTaker` counts windows; the times it reports are window indices converted by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEECH = "speech"  # the user started speaking
TURN_END = "turn-end"  # the user's turn is over: answer it
NOISE = "noise"  # what started as speech was too short to be a turn


@dataclass(frozen=True)
class TurnConfig:
    on_threshold: float = 0.5
    off_threshold: float = 0.35
    start_s: float = 0.064
    end_silence_s: float = 0.6
    min_turn_s: float = 0.2


class TurnTaker:
    """Window by window: `push(p)` returns SPEECH, TURN_END, NOISE or None.

    `speech_start` and `last_voiced` are the window indices of the utterance under way (or the
    last one): the first window of its speech and the last window above the off threshold.
    """

    def __init__(self, config: TurnConfig = TurnConfig(), window_s: float = 0.032) -> None:
        self.config = config
        self.window_s = window_s
        self._start_windows = max(1, round(config.start_s / window_s))
        self._end_windows = max(1, round(config.end_silence_s / window_s))
        self._min_windows = max(1, round(config.min_turn_s / window_s))
        self.index = -1  # the last window pushed
        self.speaking = False
        self._run = 0  # windows in a row at or above the on threshold
        self.speech_start = 0
        self.last_voiced = 0

    def push(self, p: float) -> str | None:
        c = self.config
        self.index += 1
        i = self.index
        if not self.speaking:
            self._run = self._run + 1 if p >= c.on_threshold else 0
            if self._run >= self._start_windows:
                self.speaking = True
                self.speech_start = i - self._run + 1
                self.last_voiced = i
                self._run = 0
                return SPEECH
            return None
        if p >= c.off_threshold:
            self.last_voiced = i
            return None
        if i - self.last_voiced >= self._end_windows:
            self.speaking = False
            return TURN_END if self.last_voiced - self.speech_start + 1 >= self._min_windows else NOISE
        return None

    def seconds(self, window: int) -> float:
        """The start of a window, in seconds from the first."""
        return window * self.window_s

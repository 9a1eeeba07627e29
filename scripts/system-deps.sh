#!/usr/bin/env bash
# Installs the system libraries aimsvoice needs when they are missing (Debian/Ubuntu).
# PortAudio is what sounddevice talks to; the Python package does not ship it on Linux.
# The tests need no sound card: they play through a private PulseAudio server with null sinks,
# reached through ALSA's pulse plugin (pulseaudio, pulseaudio-utils, libasound2-plugins).
# The web page's tests drive Debian's chromium, headless, through its chromium-driver (selenium).
set -euo pipefail

missing=()
ldconfig -p 2>/dev/null | grep -q 'libportaudio.so.2' || missing+=(libportaudio2)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)  # speech for the echo-cancellation tests
command -v pulseaudio >/dev/null 2>&1 || missing+=(pulseaudio)
command -v pacat >/dev/null 2>&1 || missing+=(pulseaudio-utils)
# The web page's tests: Debian's chromium and chromium-driver. Ubuntu ships Chromium as a snap only
# (`snap install chromium`, which brings chromium.chromedriver), so there it is a note, not a package.
if grep -qsE '^(ID|ID_LIKE)=.*ubuntu' /etc/os-release; then
    command -v chromium >/dev/null 2>&1 || command -v chromium.chromedriver >/dev/null 2>&1 \
        || echo "note: the web page's tests need Chromium: sudo snap install chromium" >&2
else
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi
if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f='${Status}' libasound2-plugins 2>/dev/null | grep -q 'ok installed' || missing+=(libasound2-plugins)
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "aimsvoice needs: ${missing[*]}; install them with your system's package manager." >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

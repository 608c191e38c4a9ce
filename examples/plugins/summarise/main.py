"""Summarise a text by asking the persona itself (permission: chat).

Input: {"text": "...", "max_tokens": 128 (optional)}.
Output: {"summary": "...", "words_in": N, "words_out": M}.
"""

import sys

import personad_plugin as host

MAX_TEXT_CHARS = 6000

request = host.input()
if not isinstance(request, dict) or not isinstance(request.get("text"), str) or not request["text"].strip():
    print('input must be {"text": "..."}', file=sys.stderr)
    sys.exit(2)
text = request["text"].strip()[:MAX_TEXT_CHARS]
max_tokens = request.get("max_tokens", 128)
summary = host.chat(
    "Summarise the following text in two or three sentences. Keep names and numbers.\n\n" + text,
    max_tokens=max_tokens if isinstance(max_tokens, int) else 128,
).strip()
host.finish({"summary": summary, "words_in": len(text.split()), "words_out": len(summary.split())})

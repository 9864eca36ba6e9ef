"""The starter batch ``batchvid init`` writes: a manifest whose comments explain every
field, and a small prompt file.  Both validate as written; ``run --simulate`` runs them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STARTER_FILES"]

MANIFEST: Final = """\
# A batchvid manifest: what to generate, checked against the documented model
# limits before anything is sent.
#   batchvid validate manifest.yaml        check it (exit 0 valid, 2 invalid)
#   batchvid plan manifest.yaml            every job it expands to, the totals
#   batchvid run manifest.yaml --simulate  run it against the built-in simulator
#   batchvid run manifest.yaml             the real thing (export COMETAPI_KEY=...)
version: 1
batch: my-first-batch        # the ledger's name for this batch: letters, digits, . _ -

# output_dir: videos/first   # where videos go, relative to this file; by default
#                            # videos/<batch> beside the ledger (state/batchvid.db)

# API fields for every prompt (a prompt, a matrix or a prompt file row overrides them):
defaults:
  model: doubao-seedance-2-0-fast  # also doubao-seedance-2-0, -1-5-pro, -1-0-pro
  seconds: 5                 # 2.0 models: 4-15; 1.5 Pro: 4-12; 1.0 Pro: 2-10
  resolution: 480p           # 480p or 720p; 1080p only on 1.5 Pro and 1.0 Pro
  size: "16:9"               # a ratio (21:9 16:9 4:3 1:1 3:4 9:16; quote it) or an
                             # exact WxH from the docs' table, like 864x496
  # input_reference: refs/first-frame.jpg   # image-to-video, 2.0 models only;
  #                                         # a list sends several ([Image 1] ...)

# Every combination of these values, for every prompt.  A key that is not an API
# field is a template variable: {mood} in a prompt is replaced by each value.
matrix:
  mood: [calm, stormy]

# The prompts: inline text, mappings with their own fields, or a prompt file.
prompts:
  - file: prompts.csv        # a spreadsheet: one prompt per row, with a header row.
                             # Columns named id, prompt, model, seconds, size,
                             # resolution, input_reference (several: a;b), repeat
                             # set those fields; any other column is a template
                             # variable for its row.  Also .tsv, .jsonl, .txt.
  - id: harbour              # ids name the files and the gallery's rows
    prompt: "A fishing harbour at first light, {mood} sea, gulls overhead"
    seconds: 6               # any API field, for this prompt only

repeat: 1                    # takes of every combination (different seeds)

limits:                      # how hard to push the API (flags override these)
  rate_per_minute: 60        # requests a minute, every kind together
  concurrency: 4             # requests in flight at once
  max_active_tasks: 8        # tasks queued or rendering at once
  max_wait: 30m              # a task still rendering after this is set aside as stalled
  # poll_interval: 15        # seconds between polls of one task (the default learns
  #                          # render times and polls when a render should be done)

retry:                       # automatic new attempts per kind of outcome (these are the
  error: 2                   # defaults): ERROR, usually transient
  failed: 0                  # FAILED (content refused): the same request fails again
  vanished: 1                # a task the API forgot before its video was fetched
  stalled: 0                 # past max_wait; the old task is still watched

pricing:                     # USD per output second: your own figures, not CometAPI's
  doubao-seedance-2-0: 0.10  # (a prefix also prices doubao-seedance-2-0-fast)
budget_usd: 5                # stop submitting before the estimated cost passes this
"""

PROMPTS: Final = """\
id,prompt,seconds,light
lighthouse,"A lighthouse on a cliff, {mood} sea, {light}",,golden hour
pier,"A wooden pier reaching into a {mood} sea, slow push in, {light}",4,blue hour
market,"A harbour fish market waking up, handheld, {mood} weather, {light}",,overcast morning
"""

#: File name -> content, in the order they are written.
STARTER_FILES: Final = {"manifest.yaml": MANIFEST, "prompts.csv": PROMPTS}

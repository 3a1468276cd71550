"""``python -m core``: a repeated command line is answered from the answer cache before torch
is imported (~5 s on 2 cores); only a miss imports the engine."""

import sys

from core.present.text import print_answer
from core.service import answer_cache

argv = sys.argv[1:]
cached = answer_cache.lookup(answer_cache.answer_key(argv))
if cached is not None:
    print_answer(cached, as_json="--json" in argv)
    sys.exit(0)

from core.cli import main  # noqa: E402  (the engine, torch included, loads only on a miss)

sys.exit(main(argv, cached_answers=True))

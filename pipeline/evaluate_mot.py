"""``python -m pipeline.evaluate_mot``: the documented command line, kept; the tool is pipeline/tools/evaluate_mot.py."""

from pipeline.tools.evaluate_mot import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Regenerate the model tables from the preset registry (`nonlocal_zoo.presets.PRESETS`).

Writes the README model table (between `<!-- model-table:start -->` / `<!-- model-table:end -->`) and the
accuracy-vs-cost table of `docs/choose_a_model.md` (`choice-table` markers). `--check` only compares and exits 1
when a table is stale (tests/test_model_table.py does the same).

Usage:
    python scripts/render_model_table.py            # rewrite
    python scripts/render_model_table.py --check    # exit 1 if stale
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nonlocal_zoo.model_cards import render_generated_blocks  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    stale = render_generated_blocks(ROOT, check=args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'updated'}: {path}")
    if not stale:
        print("model tables are up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

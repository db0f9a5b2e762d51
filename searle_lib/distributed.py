"""Scale-out with ``torchrun`` (torch.distributed): one process per GPU (or per CPU share), each working on its share
of an image list, with results merged to exactly what one process writes (issue 6).

The per-image random streams of OTI (``oti.image_generator``) make an image's token independent of which process
inverts it, so sharding changes nothing but the wall-clock time. Three stages shard:

- OTI: ``oti.run_oti`` with an ``out_dir`` gives chunk k to rank k mod world size (``chunkstore``) and merges the
  chunk files; without ``out_dir`` the batches are shared out and all-gathered.
- Concept association: ``concepts.concept_embeddings`` shares the concepts, ``concepts.associate`` the images.
- Feature extraction: ``features.extract_features`` shares the images; rank 0 writes the cache entry.

Every rank returns the full, merged result. On one process (no group initialised) every helper is a no-op.

Run a stage of the CLI under torchrun with this module as the entry point (it initialises the group from the
torchrun environment, gloo on CPU, nccl on CUDA, then runs ``searle``'s command line)::

    torchrun --nproc_per_node 8 -m searle_lib.distributed oti --preset paper-vitb32 --images unlabeled
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_from_env(backend: str | None = None, timeout_s: float = 1800) -> tuple[int, int]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...); (rank, world).

    Without torchrun's variables (a plain ``python`` run) nothing happens and (0, 1) is returned. ``backend``:
    default nccl when CUDA is available (each process then uses GPU ``LOCAL_RANK``), else gloo.
    """
    if is_initialized():
        return rank(), world_size()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())  # "cuda" now means this process's own GPU
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return rank(), world_size()


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous block of ``range(n)`` (the first ``n % world`` ranks get one more)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    per, extra = divmod(n, w)
    start = r * per + min(r, extra)
    return range(start, start + per + (r < extra))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (any picklable value, any size), in rank order; ``[obj]`` on one process."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def gather_rows(n: int, index: Sequence[int] | torch.Tensor, tensors: Mapping[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """Assemble ``[n, ...]`` tensors from every rank's rows (``tensors[k][j]`` is row ``index[j]``), on the CPU.

    The shares may have any lengths (variable-length all-gather through pickled CPU tensors). Rows no rank sent
    stay zero; a row sent twice takes the higher rank's value.
    """
    index = torch.as_tensor(index, dtype=torch.long).cpu()
    local = {k: _cpu(v) for k, v in tensors.items()}
    return _assemble(n, all_gather_objects((index, local)))


def _assemble(n: int, parts: list[tuple[torch.Tensor, Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    # a rank with no rows may send placeholders of any shape: the first non-empty share sets shape and dtype
    for idx, part in sorted(parts, key=lambda p: len(p[0]) == 0):
        for k, v in part.items():
            if k not in out:
                out[k] = torch.zeros((n, *v.shape[1:]), dtype=v.dtype)
            if len(idx):
                out[k][idx] = v
    return out


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m searle_lib.distributed <searle command> ...``: the CLI with the process group set up."""
    from .cli import main as cli_main
    rank_, _ = init_from_env()
    if rank_ != 0:  # one copy of the command's output; errors (stderr) still come from every rank
        sys.stdout = open(os.devnull, "w")
    try:
        return cli_main(argv if argv is not None else sys.argv[1:])
    finally:
        barrier()
        destroy()


if __name__ == "__main__":
    sys.exit(main())

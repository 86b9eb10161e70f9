"""Dynamic sparsity under torch.distributed: every rank holds the same masks (2 CPU processes, gloo)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from compiler import build_model
from compiler.sparsity import DynamicSparsity, snip_densities
from tests.compiler.test_sparsity_masks import batch, sparse_spec

WORLD_SIZE = 2
STEPS = 4


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share the CI machine's cores
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(100 + rank)  # different initial weights and drop-path draws on every rank
        spec = sparse_spec(init="snip", interval=2)
        model = build_model(spec, backend="torch")
        parallel = DistributedDataParallel(model)  # broadcasts rank 0's weights
        optimizer = torch.optim.AdamW(parallel.parameters(), lr=1e-2)
        own_batch = batch(seed=10 + rank)  # every rank scores SNIP on its own data
        sparsity = DynamicSparsity(parallel, optimizer, spec.sparsity, total_steps=20, batch=own_batch, seed=7)
        local = snip_densities(model, sparsity.weights, sparsity.density, own_batch, F.cross_entropy)
        for step in range(STEPS):
            images, labels = batch(seed=1000 * rank + step)
            F.cross_entropy(parallel(images), labels).backward()
            optimizer.step()
            sparsity.step()
            optimizer.zero_grad()
        torch.save({"masks": sparsity.state_dict()["masks"], "local_snip": local}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_every_rank_holds_identical_masks(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    assert ranks[0]["local_snip"] != ranks[1]["local_snip"], "ranks saw different batches, so SNIP disagrees"
    assert ranks[0]["masks"].keys() == ranks[1]["masks"].keys()
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name]), name

"""One model on a device with the callables a benchmark row times: a training step, an inference pass."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

import models
from bench.roofline import BytesMoved
from bench.timing import count_flops
from models import speed_paths
from models.cpu.dft_conv import direct_convolutions
from models.routing_sweeps import torch_sweeps
from studies.training.devices import autocast
from studies.training.optimizer import adam

if TYPE_CHECKING:
    from bench.options import BenchOptions


def bench_model(name: str, options: "BenchOptions", routing: str | None = None) -> torch.nn.Module:
    """A registered model at the options' image size (and routing iterations and procedure, for
    CapsNet)."""
    config = {"input_size": options.image_size}
    if routing is not None:
        config["routing"] = routing
    if options.routing_iters is not None and "routing_iters" in models.option_names(name):
        config["routing_iters"] = options.routing_iters
    return models.create(name, **config)


class ModelSteps:
    """A model, a fixed random batch and Adam on the device; `step(mode)` is what a row times."""

    def __init__(self, model: torch.nn.Module, batch: int, options: "BenchOptions", device: torch.device,
                 flop_counts: dict | None = None):
        generator = torch.Generator(device="cpu").manual_seed(options.seed)
        channels = getattr(getattr(model, "config", None), "in_channels", 1)
        size = options.image_size
        images = torch.rand(batch, channels, size, size, generator=generator)
        labels = torch.randint(0, 10, (batch,), generator=generator)
        self.images, self.labels = images.to(device), labels.to(device)
        self.model = model.to(device)
        if options.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if options.compile else self.model
        self.optimizer = adam(self.model.parameters(), lr=1e-3)  # the trainer's optimiser
        self.device, self.bf16 = device, options.bf16
        self.flop_counts = {} if flop_counts is None else flop_counts

    def train_step(self, forward=None) -> None:
        forward = forward or self.forward
        self.model.train()
        with autocast(self.device, self.bf16):
            output = forward(self.images, self.labels)
            loss = self.model.loss(output, self.images, self.labels).total
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def infer(self, forward=None) -> None:
        forward = forward or self.forward
        self.model.eval()
        with torch.inference_mode(), autocast(self.device, self.bf16):
            forward(self.images)

    def step(self, mode: str) -> Callable[[], None]:
        return self.train_step if mode == "train" else self.infer

    def work_per_image(self, mode: str) -> tuple[int, int]:
        """FLOPs and bytes moved per image (bench/roofline.py): the network's nominal work, counted on
        the eager model (the compiled one computes the same products) with direct convolutions, where
        CapsNet's DFT path needs about a third of the FLOPs, and with routing on PyTorch ops (the
        counters cannot see into the C++ kernels). Counted per batch size (the weights and Adam's
        state move once per step, whatever the batch); `flop_counts` is shared by the rows of one
        benchmark run."""
        batch = self.images.shape[0]
        key = (type(self.model), getattr(self.model, "config", None), mode, batch)
        if key not in self.flop_counts:
            fn = self.step(mode)
            moved = BytesMoved()
            with direct_convolutions(), torch_sweeps(), speed_paths.using(None):
                flops = count_flops(lambda: fn(self.model), moved)
            self.flop_counts[key] = (flops // batch, moved.total // batch)
        return self.flop_counts[key]

    def describe(self, mode: str) -> dict:
        """The row columns that describe the network rather than its speed."""
        config = getattr(self.model, "config", None)
        flops, moved = self.work_per_image(mode)
        return {
            "params": sum(p.numel() for p in self.model.parameters()),
            "flops_per_image": flops,
            "bytes_per_image": moved,
            "routing_iters": getattr(config, "routing_iters", None),
            "routing": getattr(config, "routing", None),
        }

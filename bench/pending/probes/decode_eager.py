#!/usr/bin/env python3
"""Session 7 probe: N hybrid decode steps run eagerly (hybrid_bench's configuration, 4K state),
for a profiler to pick one after the first ones warmed up:

    ncu -k regex:hdecode -s 5 -c 1 ... python3 bench/pending/probes/decode_eager.py 8"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from decode_probe import decode_setup

step, _ = decode_setup()
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):
    step()
torch.cuda.synchronize()

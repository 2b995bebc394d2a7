#!/usr/bin/env python3
"""Session 6 probe: per-CTA phase timestamps (clock64 from CTA entry; globaltimer) of single
hybrid decode steps (4K state, warm), printed by the ts plugin
(hdecode_stops_timestamps.patch) under LMK_PROBE_TS; one line "CFG <setting> <rep>" before
each step's lines (parse_ts.py summarises them). Run from the repository root:

    LM_LIB_PATH=... python3 bench/pending/probes/decode_probe_ts.py - LMK_PROBE_SMEM=150000 > ts.log"""
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from decode_probe import decode_setup, set_probe_env

libc = ctypes.CDLL(None)  # the device's printf goes through C stdio: flushed before Python's lines


def main():
    step, _ = decode_setup()
    for cfg in sys.argv[1:]:
        for rep in range(3):
            set_probe_env("-")
            for _ in range(20):  # warm, unprinted
                step()
            torch.cuda.synchronize()
            set_probe_env(cfg, LMK_PROBE_TS="1")
            print(f"CFG {cfg} {rep}", flush=True)
            step()
            torch.cuda.synchronize()
            libc.fflush(None)
            print("", flush=True)
    set_probe_env("-")


if __name__ == "__main__":
    main()

"""`python -m zoo`: the `zoo` command, as torchrun starts it (`torchrun --nproc-per-node N -m zoo compress ...`)."""

from zoo.cli import main

main()

"""`python -m distill ...`: the same command line as the `distill` script, which is what
`torchrun -m distill ...` runs on every rank."""

from distill.cli import main

main()

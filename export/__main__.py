"""`python -m export onnx MODEL.pt`: the same sub-app as `distill export` (the launcher is the
one place export/ reaches up to the command line).

There is no console script named `export`: the shell's builtin `export` would shadow it.
"""

from distill.cli import main
from distill.cli.export_cmd import app

if __name__ == "__main__":
    main(app, prog_name="python -m export")

"""`python -m export onnx MODEL.pt`: the same sub-app as `distill export`.

There is no console script named `export`: the shell's builtin `export` would shadow it.
"""

from export.cli import app

if __name__ == "__main__":
    app(prog_name="python -m export")

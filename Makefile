# `make test` and `make demo` each do all set-up on a fresh machine: venv, install (with the
# optional OpenVINO, TensorBoard, PostgreSQL-driver, timm and MLflow extras, so their tests run
# here and in CI),
# then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= $(if $(wildcard ../shared/data/cifar10-jpeg/train),../shared/data/cifar10-jpeg,cifar10)
DEMO   ?= runs/demo

.PHONY: test demo lint clean

$(BIN)/distill: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,openvino,tensorboard,postgres,timm,mlflow]'
	$(BIN)/python -c "import torch, torchvision, torch_pruning, onnxruntime; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

# Two pytest workers, one thread each (tests/conftest.py): most of the suite's time is processes
# starting (torchrun ranks, CLI runs), one core each; two workers keep two cores busy.
TEST_WORKERS ?= 2

test: $(BIN)/distill
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

demo: $(BIN)/distill
	$(BIN)/distill pipeline --data $(DATA) --preset quick --out $(DEMO)

lint: $(BIN)/distill
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache

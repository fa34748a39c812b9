# Each target installs what it needs (Debian packages as root, a venv under
# the project) and is safe to run again.

VENV       ?= .venv
PYTHON     := $(VENV)/bin/python
HOST_PYTHON ?= python3
INSTALLED  := $(VENV)/.installed
SYSTEM_PACKAGES := qemu-system-x86 linux-image-amd64 ipvsadm iptables iproute2 kmod \
	libxtables12 libip4tc2 libip6tc2 haproxy chromium curl busybox-static keepalived

.PHONY: all deps test demo bench clean

all: test

deps: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml Makefile
	scripts/install-system-packages $(SYSTEM_PACKAGES)
	test -x $(PYTHON) || $(HOST_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip setuptools wheel
	# An editable install of the flat layout (setup.cfg's package_dir) puts
	# the source tree on sys.path: twistd finds twisted/plugins/ there, and
	# the lab and test helpers, which the built package leaves out, import.
	$(PYTHON) -m pip install -q -e '.[fwmark,test,vm,lab,dev]'
	touch $@

test: deps
	$(PYTHON) scripts/run-tests

demo: deps
	$(PYTHON) -m lvsfeedback.testing.vm --rwdir results -- $(abspath $(PYTHON)) scripts/demo

bench: deps
	$(PYTHON) bench/necp_codec.py

clean:
	rm -rf $(VENV) results _trial_temp* build *.egg-info twisted/plugins/dropin.cache .mypy_cache .ruff_cache

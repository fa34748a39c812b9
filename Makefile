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
	# compat mode puts the source tree on sys.path, where twistd finds
	# twisted/plugins/ (a PEP 660 editable install hides it).
	$(PYTHON) -m pip install -q -e '.[test,vm,lab]' --config-settings editable_mode=compat
	touch $@

test: deps
	$(PYTHON) scripts/run-tests

demo: deps
	$(PYTHON) -m lvsfeedback.testing.vm --rwdir results -- $(abspath $(PYTHON)) scripts/demo

bench: deps
	$(PYTHON) bench/necp_codec.py

clean:
	rm -rf $(VENV) results _trial_temp* build *.egg-info twisted/plugins/dropin.cache

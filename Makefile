# Makefile: builds, installs and packages ksm-balloon.
#
#   make                       release build (cargo build --release --locked)
#   make install DESTDIR= PREFIX=/usr
#                              installs what the RPM ships (the spec's %install
#                              runs this very target; a by-hand install too):
#                              both binaries stripped, the hook binary under
#                              LIBEXECDIR/ksm-balloon/ and a relative symlink to
#                              it in libvirt's qemu.d hook directory
#   make uninstall             removes what `make install` put in place, except
#                              the settings file and the state directory
#   make dist                  dist/ksm-balloon-VERSION.tar.gz: the committed
#                              HEAD plus every crate vendored (`cargo vendor`),
#                              so rpmbuild needs no network; and dist/ksm-balloon.spec
#                              with Version taken from Cargo.toml
#   make rpm                   `make dist`, then rpmbuild -bb; the RPM lands in
#                              dist/rpmbuild/RPMS/<arch>/
#   make deb                   `make dist`, then dpkg-buildpackage -b on the
#                              tarball's tree (debian/rules, debhelper); the
#                              .deb and its .changes land in dist/deb/
#
# `make dist` needs the crates (from cargo's cache or the registry); `make rpm`
# and `make deb` after it need no network at all (tests/suites/40-packaging.sh
# runs them in a network namespace with no network to prove that).

VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
NAME := ksm-balloon

# Install layout. PREFIX moves the programs and data; the files libvirt and
# systemd look for by fixed paths (the hook's link, the settings, the state)
# stay under /etc and /var whatever PREFIX is.
PREFIX ?= /usr
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
PRESETDIR ?= $(PREFIX)/lib/systemd/system-preset
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
SYSCONFDIR ?= /etc
HOOKDIR ?= $(SYSCONFDIR)/libvirt/hooks/qemu.d
# The settings file: the service's EnvironmentFile=, and the hook binary's
# built-in default (libvirtd passes hooks no environment), which is
# /etc/sysconfig/ksm-balloon unless the binary was built with another
# CONFIGFILE (`make build CONFIGFILE=/etc/default/ksm-balloon`, as
# debian/rules does: src/sysconfig.rs reads KSM_BALLOON_DEFAULT_CONFIG at
# compile time). `make install` refuses a hook built for another file, so
# the pass and the hook never read different settings.
CONFIGFILE ?= $(SYSCONFDIR)/sysconfig/$(NAME)
ifneq ($(CONFIGFILE),/etc/sysconfig/$(NAME))
BUILD_ENV := KSM_BALLOON_DEFAULT_CONFIG=$(CONFIGFILE)
endif
CARGO_BUILD_FLAGS ?=
# The binary's built-in default (--state); the unit's StateDirectory= names it
# too. The hook drops its records into spool/ beside the state, where
# ksm-balloon.path watches for them.
STATEDIR := /var/lib/$(NAME)
SPOOLDIR := $(STATEDIR)/spool
# The hook is code an upgrade must replace, not configuration: it lives with
# the programs, and libvirt's hook directory holds only a link to it.
HOOKBINDIR := $(LIBEXECDIR)/$(NAME)

CARGO ?= cargo
CARGO_TARGET_DIR ?= target
BIN := $(CARGO_TARGET_DIR)/release/$(NAME)
HOOKBIN := $(CARGO_TARGET_DIR)/release/$(NAME)-hook
INSTALL ?= install
# The installed binaries carry no symbol table (the release profile builds
# no debug info, so there is nothing for a -debuginfo package either); the
# ones under target/ keep theirs for backtraces and profiling.
STRIP ?= strip

# rpmbuild checks BuildRequires against the rpm database. On an RPM-based
# host that is right; on Debian (where CI builds the RPM with Debian's rpm
# package) the rpm database is empty and every BuildRequires would be
# "missing", so --nodeps is added there. Detected by asking the rpm database
# whether rpm itself is installed.
RPMBUILD ?= rpmbuild
RPMBUILD_NODEPS := $(shell rpm -q --quiet rpm 2>/dev/null || echo --nodeps)
RPMBUILD_FLAGS ?=

DISTNAME := $(NAME)-$(VERSION)
TARBALL := dist/$(DISTNAME).tar.gz
SPEC := dist/$(NAME).spec
RPMTOP := $(CURDIR)/dist/rpmbuild
# The tarball is remade when a committed file changes (empty outside git).
GITFILES := $(wildcard $(shell git ls-files 2>/dev/null))

# The .deb: built by dpkg-buildpackage in dist/deb/<name>-<version>/, the
# tarball's tree (the committed HEAD, vendor/ and debian/). DEB_BUILD_FLAGS
# adds options (tests/packaging/build-deb.sh: -Ppkg.ksm-balloon.rustup for a
# rustup toolchain instead of Debian's cargo-web).
DEBDIR := dist/deb
DEB_BUILD_FLAGS ?=

.PHONY: all build install uninstall dist rpm deb clean-dist

all: build

build:
	$(BUILD_ENV) $(CARGO) build --release --locked $(CARGO_BUILD_FLAGS)

install:
	@test -x $(BIN) || { echo "$(BIN) is missing: run 'make' first" >&2; exit 1; }
	@test -x $(HOOKBIN) || { echo "$(HOOKBIN) is missing: run 'make' first" >&2; exit 1; }
	@grep -qaF -- '$(CONFIGFILE)' $(HOOKBIN) || { echo "$(HOOKBIN) was built to read another settings \
		file than CONFIGFILE=$(CONFIGFILE): rebuild it with 'make build CONFIGFILE=$(CONFIGFILE)'" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(HOOKBINDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(PRESETDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(HOOKDIR) \
		$(DESTDIR)$(dir $(CONFIGFILE)) \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	$(INSTALL) -d -m 0700 $(DESTDIR)$(STATEDIR) $(DESTDIR)$(SPOOLDIR)
	$(INSTALL) -s --strip-program=$(STRIP) -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/$(NAME)
	$(INSTALL) -s --strip-program=$(STRIP) -m 0755 $(HOOKBIN) $(DESTDIR)$(HOOKBINDIR)/$(NAME)-hook
	@# Relative, so it resolves inside a chroot or an image being built too.
	ln -sfr $(DESTDIR)$(HOOKBINDIR)/$(NAME)-hook $(DESTDIR)$(HOOKDIR)/$(NAME)
	sed -e 's|^ExecStart=/usr/bin/$(NAME) |ExecStart=$(BINDIR)/$(NAME) |' \
		-e 's|^EnvironmentFile=-/etc/sysconfig/$(NAME)$$|EnvironmentFile=-$(CONFIGFILE)|' \
		-e 's|^# Settings: /etc/sysconfig/$(NAME) |# Settings: $(CONFIGFILE) |' \
		systemd-timers/$(NAME).service >$(DESTDIR)$(UNITDIR)/$(NAME).service
	chmod 0644 $(DESTDIR)$(UNITDIR)/$(NAME).service
	$(INSTALL) -m 0644 systemd-timers/$(NAME).timer $(DESTDIR)$(UNITDIR)/$(NAME).timer
	$(INSTALL) -m 0644 systemd-timers/$(NAME).path $(DESTDIR)$(UNITDIR)/$(NAME).path
	$(INSTALL) -m 0644 packaging/50-$(NAME).preset $(DESTDIR)$(PRESETDIR)/50-$(NAME).preset
	@# An operator's settings are never overwritten by a by-hand reinstall.
	if [ -e $(DESTDIR)$(CONFIGFILE) ]; then \
		echo "keeping the existing $(DESTDIR)$(CONFIGFILE)"; \
	else \
		sed 's|/etc/sysconfig/$(NAME)|$(CONFIGFILE)|g' packaging/sysconfig >$(DESTDIR)$(CONFIGFILE) && \
		chmod 0644 $(DESTDIR)$(CONFIGFILE); \
	fi
	$(INSTALL) -m 0644 man/$(NAME).8 $(DESTDIR)$(MANDIR)/man8/$(NAME).8
	$(BIN) completions bash >$(DESTDIR)$(BASHCOMPDIR)/$(NAME)
	$(BIN) completions zsh >$(DESTDIR)$(ZSHCOMPDIR)/_$(NAME)
	$(BIN) completions fish >$(DESTDIR)$(FISHCOMPDIR)/$(NAME).fish
	chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/$(NAME) $(DESTDIR)$(ZSHCOMPDIR)/_$(NAME) \
		$(DESTDIR)$(FISHCOMPDIR)/$(NAME).fish

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/$(NAME) $(DESTDIR)$(HOOKBINDIR)/$(NAME)-hook \
		$(DESTDIR)$(UNITDIR)/$(NAME).service $(DESTDIR)$(UNITDIR)/$(NAME).timer \
		$(DESTDIR)$(UNITDIR)/$(NAME).path $(DESTDIR)$(PRESETDIR)/50-$(NAME).preset \
		$(DESTDIR)$(HOOKDIR)/$(NAME) $(DESTDIR)$(MANDIR)/man8/$(NAME).8 \
		$(DESTDIR)$(BASHCOMPDIR)/$(NAME) $(DESTDIR)$(ZSHCOMPDIR)/_$(NAME) \
		$(DESTDIR)$(FISHCOMPDIR)/$(NAME).fish
	rmdir $(DESTDIR)$(HOOKBINDIR) 2>/dev/null || true
	@echo "left in place: $(DESTDIR)$(CONFIGFILE) and $(DESTDIR)$(STATEDIR)"

dist: $(TARBALL) $(SPEC)

# The committed HEAD (git archive: what a clean clone holds), plus vendor/
# and the .cargo/config.toml that points cargo at it, plus the licence of
# every crate linked into the binary.
$(TARBALL): $(GITFILES)
	@test -n "$(VERSION)" || { echo "no version in Cargo.toml" >&2; exit 1; }
	rm -rf dist/$(DISTNAME) $(TARBALL)
	mkdir -p dist/$(DISTNAME)/.cargo
	git archive --format=tar HEAD | tar -x -C dist/$(DISTNAME)
	cd dist/$(DISTNAME) && $(CARGO) vendor --locked --versioned-dirs vendor >.cargo/config.toml
	cd dist/$(DISTNAME) && $(CARGO) tree --locked --offline -e normal,build --prefix none \
		--format '{p}: {l}' | sed -e 's/ (\*)$$//' -e 's/ (proc-macro)//' -e 's/ (\/[^)]*)//' \
		| sort -u >LICENSE.dependencies
	tar --sort=name --owner=0 --group=0 --numeric-owner \
		--mtime="@$$(git log -1 --format=%ct HEAD)" \
		-C dist -czf $(TARBALL) $(DISTNAME)
	rm -rf dist/$(DISTNAME)

# The spec with Version from Cargo.toml (the committed spec keeps a literal
# that tests/suites/40-packaging.sh checks against Cargo.toml).
$(SPEC): packaging/$(NAME).spec Cargo.toml
	mkdir -p dist
	sed 's/^Version:.*/Version:        $(VERSION)/' packaging/$(NAME).spec >$@

rpm: $(TARBALL) $(SPEC)
	$(RPMBUILD) -bb $(RPMBUILD_NODEPS) $(RPMBUILD_FLAGS) \
		--define "_topdir $(RPMTOP)" --define "_sourcedir $(CURDIR)/dist" $(SPEC)

# debian/changelog's upstream version must be Cargo.toml's (the package is
# built from this tarball; tests/suites/40-packaging.sh checks it too).
deb: $(TARBALL)
	@v=$$(dpkg-parsechangelog -l debian/changelog -S Version) && [ "$${v%-*}" = "$(VERSION)" ] || \
		{ echo "debian/changelog's version $$v is not Cargo.toml's $(VERSION)-<revision>" >&2; exit 1; }
	rm -rf $(DEBDIR)
	mkdir -p $(DEBDIR)
	tar -xzf $(TARBALL) -C $(DEBDIR)
	cd $(DEBDIR)/$(DISTNAME) && dpkg-buildpackage -b -us -uc $(DEB_BUILD_FLAGS)

clean-dist:
	rm -rf dist

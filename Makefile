# chainmail — the two commands a newcomer needs:
#   go run ./cmd/chainmail serve     a working node on the embedded default
#   make test                        the whole suite (installs its tools first)

GO ?= go
PKGS := ./...

.PHONY: all build test deps vet fmt-check fuzz bench clean

all: build

build:
	$(GO) build -o bin/chainmail ./cmd/chainmail

# deps installs swaks, Postfix (smtp-source, smtp-sink), Chromium and
# Python when missing; quiet when present.
deps:
	@sh scripts/deps.sh

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The whole suite, race detector on: unit tests, fuzz seed corpora, and the
# end-to-end tests that run the real binary against real SMTP clients. The
# browser test's screenshots of every console page stay in ARTIFACTS.
ARTIFACTS ?= $(CURDIR)/test-artifacts
test: deps fmt-check vet
	CHAINMAIL_ARTIFACTS=$(ARTIFACTS) $(GO) test -race -count=1 -timeout 20m $(PKGS)

# Short fuzzing runs of every parser of untrusted bytes (their seed corpora
# already run in make test). FUZZTIME per target.
FUZZTIME ?= 30s
FUZZ_TARGETS := \
	./internal/config:FuzzParse ./internal/envelope:FuzzReceive \
	./archive:FuzzParseHeaders ./archive:FuzzParseCommonDate \
	./journal:FuzzParse ./journal:FuzzUnwrapNDR ./journal:FuzzDecodeSubaddress \
	./listener:FuzzSession ./web:FuzzParseQuery ./web:FuzzConsoleMIMEParts \
	./balancer:FuzzParseConfig ./balancer:FuzzReadReply ./balancer:FuzzGreetingParser \
	./cmd/chainmail:FuzzSplitMbox ./cmd/chainmail:FuzzMboxRoundTrip ./cmd/chainmail:FuzzMaildirNames
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "== $$pkg $$fn"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./archive ./internal/... ./journal

clean:
	rm -rf bin chainmail-data test-artifacts

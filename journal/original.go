package journal

import (
	"encoding/base64"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"
)

// originalInfo is what the header (and, for a multipart, the part headers)
// of an attached original say about it.
type originalInfo struct {
	report bool // it is itself a journal report
	tnef   bool // it carries its content as TNEF (winmail.dat)
}

// inspect reads the attached original's header, and the headers of its
// top-level parts when it is multipart, to find a nested report or a TNEF
// body. Only headers are kept; bodies are streamed past.
func (p Parser) inspect(src io.ReaderAt, size, base int64, orig *Part) (originalInfo, error) {
	var info originalInfo
	local := &Part{Offset: orig.Offset - base, Length: orig.Length, Encoding: orig.Encoding}
	if local.Offset < 0 || local.Offset > size || local.Length > size-local.Offset {
		return info, fmt.Errorf("part at %d+%d lies outside its %d-byte container", local.Offset, local.Length, size)
	}
	rd, err := local.Open(src)
	if err != nil {
		return info, err
	}
	hdr, bodyOff, err := readHeaderBlock(rd, p.MaxHeaderBytes)
	if err != nil {
		return info, fmt.Errorf("header: %w", wrapLimit(err))
	}
	h := parseHeader(hdr)
	if IsReport(h.Map()) {
		info.report = true
		return info, nil
	}
	ct, params := mediaType(h.Get("Content-Type"))
	if isTNEFType(ct) {
		info.tnef = true
		return info, nil
	}
	if !strings.HasPrefix(ct, "multipart/") || params["boundary"] == "" {
		return info, nil
	}
	// The common TNEF form: a multipart/mixed whose attachment is
	// winmail.dat. Reopen, as the header read may have buffered past the
	// body's start.
	if rd, err = local.Open(src); err != nil {
		return info, err
	}
	if _, err := io.CopyN(io.Discard, rd, bodyOff); err != nil {
		return info, fmt.Errorf("body: %w", err)
	}
	_, err = scanParts(rd, 0, params["boundary"],
		scanLimits{MaxHeaderBytes: p.MaxHeaderBytes, MaxParts: p.MaxParts}, 0,
		func(rp *rawPart) (bool, error) {
			ph := parseHeader(rp.Header)
			pct, pparams := mediaType(ph.Get("Content-Type"))
			if isTNEFType(pct) || strings.EqualFold(filename(&ph, pparams), "winmail.dat") {
				info.tnef = true
			}
			return false, nil
		},
		func(*rawPart, []byte) error { return nil })
	if err != nil {
		// The original is archived as received either way; a broken inner
		// multipart only means the TNEF flag may be missing.
		return info, fmt.Errorf("body: %w", wrapLimit(err))
	}
	return info, nil
}

// decoder undoes a Content-Transfer-Encoding as normalised by
// transferEncoding.
func decoder(enc string, r io.Reader) (io.Reader, error) {
	switch enc {
	case "":
		return r, nil
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Filter{r: r}), nil
	case "quoted-printable":
		return quotedprintable.NewReader(r), nil
	}
	return nil, fmt.Errorf("unsupported Content-Transfer-Encoding %q", clip(enc))
}

// base64Filter drops everything but the base64 alphabet and padding: line
// breaks (RFC 2045 §6.8 requires ignoring them) and the stray spaces or
// indentation some generators add.
type base64Filter struct {
	r io.Reader
}

func (f *base64Filter) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := f.r.Read(p)
		k := 0
		for _, c := range p[:n] {
			if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=' {
				p[k] = c
				k++
			}
		}
		if k > 0 || err != nil {
			return k, err
		}
	}
}

package envelope

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"sync"
)

// ErrBareLF is returned for DATA with a LF not preceded by CR (RFC 5321
// §2.3.8). Accepting it would make the archived bytes ambiguous and opens the
// door to SMTP smuggling through a lenient next hop.
var ErrBareLF = errors.New("bare LF in message data")

// SpoolOptions says where and when DATA leaves memory.
type SpoolOptions struct {
	Dir       string // spool directory for messages past Threshold
	Threshold int64  // bytes kept in memory before spilling to a file
	// ParseTrace keeps the X-Chainmail-Trace hops found in the header (a
	// role: ha listener talking to a trusted peer). Without it they are
	// removed all the same, and ignored.
	ParseTrace bool
}

// Body is a received message's bytes: in memory when small, in a spool file
// when large, so a 50 MB message does not cost 50 MB of heap.
type Body struct {
	mem  []byte
	file *os.File
	size int64
	buf  *bytes.Buffer // the pooled buffer behind mem, returned by Close
}

// BodyFromBytes wraps bytes already in memory (imports, tests).
func BodyFromBytes(b []byte) *Body { return &Body{mem: b, size: int64(len(b))} }

// Size is the byte count of the message.
func (b *Body) Size() int64 { return b.size }

// Bytes returns the message when it is held in memory, or nil.
func (b *Body) Bytes() []byte {
	if b.file != nil {
		return nil
	}
	return b.mem
}

// ReadAt reads from the message at off.
func (b *Body) ReadAt(p []byte, off int64) (int, error) {
	if b.file != nil {
		return b.file.ReadAt(p, off)
	}
	if off >= int64(len(b.mem)) {
		return 0, io.EOF
	}
	n := copy(p, b.mem[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Reader reads the whole message from the start.
func (b *Body) Reader() io.Reader { return io.NewSectionReader(b, 0, b.size) }

// Head returns up to max bytes of the start of the message (its header
// section, for indexing).
func (b *Body) Head(max int) []byte {
	if b.file == nil {
		if len(b.mem) > max {
			return b.mem[:max]
		}
		return b.mem
	}
	n := min(int64(max), b.size)
	buf := make([]byte, n)
	k, _ := b.file.ReadAt(buf, 0)
	return buf[:k]
}

// Close releases the spool file, if any, and the memory of a small
// message: neither Bytes, Head nor ReadAt may be used after it.
func (b *Body) Close() error {
	if b.buf != nil {
		putSpoolBuffer(b.buf)
		b.buf, b.mem = nil, nil
	}
	if b.file == nil {
		return nil
	}
	name := b.file.Name()
	err := b.file.Close()
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	b.file = nil
	return err
}

// Received is the outcome of reading one DATA stream.
type Received struct {
	Body  *Body
	Hash  Hash
	Trace Trace
	// BadTrace counts trace fields that could not be parsed (and were
	// dropped).
	BadTrace int
}

// Receive reads a DATA stream (already dot-unstuffed) to its end: it strips
// chainmail's trace fields from the header section, hashes and spools the
// rest. On error nothing is left on disk.
func Receive(r io.Reader, opts SpoolOptions) (*Received, error) {
	sp := &spooler{opts: opts, h: sha256.New(), buf: getSpoolBuffer()}
	res := &Received{}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	err := sp.filter(br, res, opts.ParseTrace)
	br.Reset(nil)
	readerPool.Put(br)
	if err != nil {
		sp.discard()
		return nil, err
	}
	res.Body = sp.body()
	sp.h.Sum(res.Hash[:0])
	return res, nil
}

// The reader in front of DATA and the memory of small messages are
// recycled: at thousands of messages a second, allocating and clearing
// them was a visible share of a node's CPU (docs/BENCHMARKS.md). The
// pools are caches only; the garbage collector empties them.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}
	spoolPool  = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

// maxPooledBuffer keeps the occasional large in-memory message from
// pinning its buffer in the pool.
const maxPooledBuffer = 256 << 10

func getSpoolBuffer() *bytes.Buffer { return spoolPool.Get().(*bytes.Buffer) }

func putSpoolBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBuffer {
		return
	}
	b.Reset()
	spoolPool.Put(b)
}

type spooler struct {
	opts SpoolOptions
	h    hash.Hash
	buf  *bytes.Buffer // nil once the message moved to file
	file *os.File
	size int64
	last byte // last byte written, to find a bare LF across writes
}

func (s *spooler) Write(p []byte) (int, error) {
	// Every LF must follow a CR, the previous write's last byte included.
	for i := 0; i < len(p); {
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			break
		}
		i += j
		prev := s.last
		if i > 0 {
			prev = p[i-1]
		}
		if prev != '\r' {
			return i, ErrBareLF
		}
		i++
	}
	if len(p) > 0 {
		s.last = p[len(p)-1]
	}
	s.h.Write(p)
	s.size += int64(len(p))
	if s.file == nil && int64(s.buf.Len()+len(p)) > s.opts.Threshold {
		f, err := os.CreateTemp(s.opts.Dir, "data-*.eml")
		if err != nil {
			return 0, fmt.Errorf("spool: %w", err)
		}
		s.file = f
		if _, err := f.Write(s.buf.Bytes()); err != nil {
			return 0, fmt.Errorf("spool: %w", err)
		}
		putSpoolBuffer(s.buf)
		s.buf = nil
	}
	if s.file != nil {
		if _, err := s.file.Write(p); err != nil {
			return 0, fmt.Errorf("spool: %w", err)
		}
		return len(p), nil
	}
	return s.buf.Write(p)
}

func (s *spooler) body() *Body {
	if s.file != nil {
		return &Body{file: s.file, size: s.size}
	}
	return &Body{mem: s.buf.Bytes(), size: s.size, buf: s.buf}
}

func (s *spooler) discard() {
	if s.buf != nil {
		putSpoolBuffer(s.buf)
		s.buf = nil
	}
	if s.file != nil {
		name := s.file.Name()
		s.file.Close()
		os.Remove(name)
	}
}

// filter copies the header section field by field, dropping trace fields,
// then the body unchanged.
func (s *spooler) filter(br *bufio.Reader, res *Received, parse bool) error {
	var field []byte // the current header field, with its continuation lines
	flush := func() error {
		if len(field) == 0 {
			return nil
		}
		defer func() { field = field[:0] }()
		name, value, ok := bytes.Cut(field, []byte{':'})
		if ok && strings.EqualFold(string(bytes.TrimRight(name, " \t")), TraceHeader) {
			if parse {
				hop, err := ParseHop(unfold(value))
				if err != nil {
					res.BadTrace++
				} else {
					res.Trace = append(res.Trace, hop)
				}
			}
			return nil
		}
		_, err := s.Write(field)
		return err
	}
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A header line longer than the buffer is not ours to strip:
			// pass it and the rest of the message through as they are.
			if ferr := flush(); ferr != nil {
				return ferr
			}
			if _, werr := s.Write(line); werr != nil {
				return werr
			}
			break
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') && len(field) > 0 {
			field = append(field, line...) // continuation of a folded field
		} else {
			if ferr := flush(); ferr != nil {
				return ferr
			}
			if isHeaderLine(line) {
				field = append(field, line...)
			} else {
				// The blank line, or anything that cannot be a header
				// field, ends the header section.
				if _, werr := s.Write(line); werr != nil {
					return werr
				}
				break
			}
		}
		if err == io.EOF {
			return flush()
		}
	}
	_, err := io.Copy(s, br)
	return err
}

func isHeaderLine(line []byte) bool {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return false
	}
	for _, c := range line[:colon] {
		if c <= ' ' || c > '~' {
			return c == ' ' || c == '\t' // "Name :" is obsolete syntax but seen
		}
	}
	return true
}

func unfold(v []byte) string {
	s := strings.ReplaceAll(string(v), "\r\n", "")
	return strings.TrimSpace(strings.ReplaceAll(s, "\n", ""))
}

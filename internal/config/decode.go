package config

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Validator is a configuration root: after decoding, Load calls Validate,
// which reports every problem it finds (not just the first).
type Validator interface {
	Validate(p *Problems)
}

// defaulter is implemented by config structs with non-zero defaults. The
// decoder calls Defaults on each such value before decoding into it, so a key
// left out of the file keeps its default and a key given overrides it.
type defaulter interface {
	Defaults()
}

// Load reads a YAML file strictly into v and validates it.
func Load(file string, v Validator) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return Parse(file, data, v)
}

// Parse decodes YAML data strictly into v and validates it. Every problem,
// from the YAML syntax to a failed cross-check, comes back in one Errors
// value whose lines name the file, the line and the key.
func Parse(file string, data []byte, v Validator) error {
	d, err := decode(file, data, v)
	var errs Errors
	if err != nil {
		if d == nil {
			return err // not YAML at all: nothing to validate
		}
		errs = err.(Errors)
	}
	p := &Problems{}
	v.Validate(p)
	for _, pr := range p.list {
		// A key that failed to decode kept its default; what validation
		// says about it (or about what contains it) would only repeat or
		// mislead.
		if related(pr.Path, errs) {
			continue
		}
		errs = append(errs, Error{File: file, Line: d.lineOf(pr.Path), Path: pr.Path, Msg: pr.Msg})
	}
	if len(errs) == 0 {
		return nil
	}
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
	return errs
}

func related(path string, errs Errors) bool {
	for _, e := range errs {
		if e.Path == "" {
			continue
		}
		if path == e.Path || strings.HasPrefix(path, e.Path+".") || strings.HasPrefix(path, e.Path+"[") ||
			strings.HasPrefix(e.Path, path+".") || strings.HasPrefix(e.Path, path+"[") {
			return true
		}
	}
	return false
}

// Decode decodes YAML (or JSON, which is YAML) strictly into v, a pointer
// to a struct, with defaults and without validation: for one listener,
// route or connection sent to the API, validated later as part of the
// whole node.
func Decode(file string, data []byte, v any) error {
	_, err := decode(file, data, v)
	if err != nil {
		return err
	}
	return nil
}

func decode(file string, data []byte, v any) (*decoder, error) {
	d := &decoder{file: file, lines: map[string]int{}}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{{File: file, Line: yamlErrLine(err), Msg: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		panic("config: Decode needs a pointer to a struct")
	}
	callDefaults(rv.Elem())
	switch {
	case root.Kind == 0: // empty document: defaults only
	case root.Kind == yaml.DocumentNode && len(root.Content) == 1:
		d.value(root.Content[0], rv.Elem(), "")
	default:
		d.fail(&root, "", "expected a single YAML document")
	}
	if len(d.errs) > 0 {
		return d, d.errs
	}
	return d, nil
}

// Error is one configuration problem.
type Error struct {
	File string
	Line int
	Path string // "listeners[1].max_message_size"; empty for syntax errors
	Msg  string
}

func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Path != "" {
		b.WriteString(": ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file, in file order.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Problems collects validation problems by key path.
type Problems struct {
	list []Problem
}

// Problem is one failed validation rule.
type Problem struct {
	Path string
	Msg  string
}

// Add records a problem at path ("routes[0].from[1]").
func (p *Problems) Add(path, format string, args ...any) {
	p.list = append(p.list, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// List returns the problems recorded so far.
func (p *Problems) List() []Problem { return p.list }

// Size is a byte count written as "64MiB", "10KB", "512" in the file.
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
}

// ParseSize reads a size such as "64MiB" or "10KB".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || (mult > 1 && n > (1<<62)/mult) {
		return 0, fmt.Errorf("invalid size %q (want a number with an optional unit KiB, MiB, GiB, KB, MB, GB)", s)
	}
	return Size(n * mult), nil
}

func (s Size) String() string {
	switch {
	case s >= 1<<30 && s%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", s>>30)
	case s >= 1<<20 && s%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", s>>20)
	case s >= 1<<10 && s%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", s>>10)
	}
	return strconv.FormatInt(int64(s), 10)
}

// MarshalYAML writes a size the way an operator would.
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalText lets JSON and YAML encoders show "64MiB".
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText accepts what ParseSize accepts, and bare numbers from JSON.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	sizeType     = reflect.TypeFor[Size]()
)

type decoder struct {
	file  string
	errs  Errors
	lines map[string]int // key path → line, for validation messages
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, Error{File: d.file, Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// lineOf finds the line of path or of its nearest ancestor present in the
// file (a missing required key is reported at its parent).
func (d *decoder) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := d.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if path != "" {
		d.lines[path] = n.Line
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // "key:" with nothing keeps the default
	}
	switch v.Type() {
	case durationType:
		s, ok := d.scalar(n, path, "a duration such as 2s or 5m")
		if !ok {
			return
		}
		dur, err := time.ParseDuration(s)
		if err != nil {
			d.fail(n, path, "invalid duration %q (want a Go duration such as 30s, 5m, 1h)", s)
			return
		}
		v.SetInt(int64(dur))
		return
	case sizeType:
		s, ok := d.scalar(n, path, "a size such as 64MiB")
		if !ok {
			return
		}
		sz, err := ParseSize(s)
		if err != nil {
			d.fail(n, path, "%v", err)
			return
		}
		v.SetInt(int64(sz))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
			callDefaults(v.Elem())
		}
		d.value(n, v.Elem(), path)
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			callDefaults(s.Index(i))
			d.value(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode || v.Type().Key().Kind() != reflect.String {
			d.fail(n, path, "expected a mapping, got %s", describe(n))
			return
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			ev := reflect.New(v.Type().Elem()).Elem()
			callDefaults(ev)
			d.value(n.Content[i+1], ev, join(path, k))
			m.SetMapIndex(reflect.ValueOf(k).Convert(v.Type().Key()), ev)
		}
		v.Set(m)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		s, ok := d.scalar(n, path, "true or false")
		if !ok {
			return
		}
		b, err := strconv.ParseBool(s)
		if err != nil {
			d.fail(n, path, "invalid boolean %q (want true or false)", s)
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		s, ok := d.scalar(n, path, "an integer")
		if !ok {
			return
		}
		i, err := strconv.ParseInt(s, 0, v.Type().Bits())
		if err != nil {
			d.fail(n, path, "invalid integer %q", s)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		s, ok := d.scalar(n, path, "a number")
		if !ok {
			return
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			d.fail(n, path, "invalid number %q", s)
			return
		}
		v.SetFloat(f)
	default:
		panic(fmt.Sprintf("config: unsupported field kind %s at %s", v.Kind(), path))
	}
}

// scalar returns a scalar's text with ${VAR} references expanded, so secrets
// such as API tokens can stay out of the file.
func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "expected %s, got %s", want, describe(n))
		return "", false
	}
	if !strings.Contains(n.Value, "${") {
		return n.Value, true
	}
	var missing []string
	s := os.Expand(n.Value, func(name string) string {
		val, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		return val
	})
	if len(missing) > 0 {
		d.fail(n, path, "environment variable %s is not set", strings.Join(missing, ", "))
		return "", false
	}
	return s, true
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		key := kn.Value
		kp := join(path, key)
		if seen[key] {
			d.fail(kn, kp, "duplicate key")
			continue
		}
		seen[key] = true
		idx, ok := fields[key]
		if !ok {
			d.fail(kn, kp, "unknown key (known: %s)", strings.Join(sortedKeys(fields), ", "))
			continue
		}
		d.lines[kp] = kn.Line
		d.value(vn, v.Field(idx), kp)
		d.lines[kp] = kn.Line
	}
}

func fieldsOf(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = strings.ToLower(f.Name)
		}
		m[tag] = i
	}
	return m
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// callDefaults applies Defaults to v and, first, to its nested struct fields,
// so a section left out of the file (web:, log:) still has its defaults.
func callDefaults(v reflect.Value) {
	if v.Kind() != reflect.Struct || !v.CanAddr() {
		return
	}
	for i := range v.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Struct && v.Type().Field(i).IsExported() {
			callDefaults(f)
		}
	}
	if df, ok := v.Addr().Interface().(defaulter); ok {
		df.Defaults()
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func yamlErrLine(err error) int {
	// yaml.v3 syntax errors read "yaml: line 7: ..."
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		var l int
		if _, e := fmt.Sscanf(s[i:], "line %d", &l); e == nil {
			return l
		}
	}
	return 0
}

package config

import (
	"reflect"
	"strings"
	"time"
)

// ToMap renders a config value the way its file spells it: keys are the
// yaml names, durations "2s", sizes "64MiB", zero values left out, and
// secrets (fields whose json tag is "-") never included. The API and the
// console show configuration in this form, and accept it back.
func ToMap(v any) map[string]any {
	m, _ := toValue(reflect.ValueOf(v)).(map[string]any)
	return m
}

func toValue(v reflect.Value) any {
	switch v.Type() {
	case durationType:
		return time.Duration(v.Int()).String()
	case sizeType:
		return Size(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return toValue(v.Elem())
	case reflect.Struct:
		m := map[string]any{}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() || f.Tag.Get("json") == "-" {
				continue
			}
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			fv := v.Field(i)
			if fv.IsZero() {
				continue
			}
			m[name] = toValue(fv)
		}
		return m
	case reflect.Slice:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = toValue(v.Index(i))
		}
		return out
	}
	return v.Interface()
}

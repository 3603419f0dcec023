package baton

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
)

var (
	taskContextType = reflect.TypeOf((*TaskContext)(nil))
	contextType     = reflect.TypeOf((*context.Context)(nil)).Elem()
	errorType       = reflect.TypeOf((*error)(nil)).Elem()
)

// handler calls a task body of any shape Register accepts:
//
//	func(ctx *baton.TaskContext, a A, b B, ...) (R, error)
//	func(ctx *baton.TaskContext, a A, ...) error
//
// (ctx may also be declared as context.Context; a last variadic parameter
// takes the remaining arguments). Each JSON argument is decoded into its
// parameter's type with encoding/json.
type handler struct {
	fn       reflect.Value
	params   []reflect.Type // after ctx; for a variadic body, the last is the slice type
	variadic bool
	result   bool // returns (R, error), not just error
}

func newHandler(fn any) (*handler, error) {
	v := reflect.ValueOf(fn)
	t := v.Type()
	if t.Kind() != reflect.Func {
		return nil, fmt.Errorf("a task body must be a func, not %s", t)
	}
	if t.NumIn() == 0 || (t.In(0) != taskContextType && t.In(0) != contextType) {
		return nil, fmt.Errorf("a task body's first parameter must be *baton.TaskContext or context.Context (%s)", t)
	}
	h := &handler{fn: v, variadic: t.IsVariadic()}
	for i := 1; i < t.NumIn(); i++ {
		h.params = append(h.params, t.In(i))
	}
	switch {
	case t.NumOut() == 1 && t.Out(0) == errorType:
	case t.NumOut() == 2 && t.Out(1) == errorType:
		h.result = true
	default:
		return nil, fmt.Errorf("a task body must return error or (R, error) (%s)", t)
	}
	return h, nil
}

// argsError is a fatal InvalidArguments failure.
type argsError struct{ msg string }

func (e *argsError) Error() string     { return e.msg }
func (e *argsError) ErrorType() string { return ErrorTypeInvalidArguments }

// call decodes args into the body's parameters and runs it.
func (h *handler) call(tc *TaskContext, name string, args []json.RawMessage) (any, error) {
	fixed := len(h.params)
	if h.variadic {
		fixed--
	}
	if len(args) < fixed || (!h.variadic && len(args) > fixed) {
		want := fmt.Sprint(fixed)
		if h.variadic {
			want = fmt.Sprintf("at least %d", fixed)
		}
		return nil, Fatal(&argsError{fmt.Sprintf("%s takes %s argument(s), got %d", name, want, len(args))})
	}
	in := make([]reflect.Value, 0, len(args)+1)
	in = append(in, reflect.ValueOf(tc))
	decode := func(i int, t reflect.Type) (reflect.Value, error) {
		p := reflect.New(t)
		dec := json.NewDecoder(bytes.NewReader(args[i]))
		if err := dec.Decode(p.Interface()); err != nil {
			return reflect.Value{}, Fatal(&argsError{fmt.Sprintf("%s: argument %d does not decode into %s: %v", name, i, t, err)})
		}
		return p.Elem(), nil
	}
	for i := 0; i < fixed; i++ {
		v, err := decode(i, h.params[i])
		if err != nil {
			return nil, err
		}
		in = append(in, v)
	}
	if h.variadic {
		elem := h.params[fixed].Elem()
		for i := fixed; i < len(args); i++ {
			v, err := decode(i, elem)
			if err != nil {
				return nil, err
			}
			in = append(in, v)
		}
	}
	out := h.fn.Call(in)
	errV := out[len(out)-1]
	var err error
	if !errV.IsNil() {
		err = errV.Interface().(error)
	}
	if !h.result || err != nil {
		return nil, err
	}
	return out[0].Interface(), nil
}

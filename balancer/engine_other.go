//go:build !linux

package balancer

import (
	"errors"
	"net"
)

// Outside Linux there is no engine: each frontend has an accept loop and
// each session a goroutine (session.go).
const useEngine = false

type engine struct{}

func newEngine(*Balancer) (*engine, error) { return nil, errors.New("balancer: no event loop here") }

func (e *engine) run()                     {}
func (e *engine) sync()                    {}
func (e *engine) stop()                    {}
func (e *engine) killAll() int             { return 0 }
func (e *engine) addListener(*frontend)    {}
func (e *engine) removeListener(*frontend) {}

func dupListener(*net.TCPListener) (int, error) { return -1, errors.New("not used") }
func closeFD(int)                               {}

package main

import (
	"context"
	"fmt"
	"reflect"

	"chainmail/internal/config"
	"chainmail/internal/liveconfig"
	"chainmail/listener"
	"chainmail/web"
)

// runningListener is a listener the node runs, with what stops it.
type runningListener struct {
	l      *listener.Listener
	cancel context.CancelFunc
	done   chan struct{}
}

func (n *node) bindListener(lc config.Listener) (*runningListener, error) {
	l, err := listener.New(lc, n.ldeps)
	if err != nil {
		return nil, err
	}
	if err := l.Listen(); err != nil {
		return nil, err
	}
	return &runningListener{l: l}, nil
}

// runListener starts a bound listener under the node's context; n.mu held.
func (n *node) runListener(rl *runningListener) {
	ctx, cancel := context.WithCancel(n.lctx)
	rl.cancel, rl.done = cancel, make(chan struct{})
	n.lwg.Add(1)
	go func() {
		defer n.lwg.Done()
		defer close(rl.done)
		if err := rl.l.Run(ctx); err != nil {
			select {
			case n.lerr <- err:
			default:
			}
		}
	}()
}

func (n *node) stopListener(rl *runningListener) {
	if rl.cancel != nil {
		rl.cancel()
		<-rl.done
	}
}

// Apply makes a live configuration change real (liveconfig.Applier):
// listeners removed or changed stop (their transactions finish), routes and
// connections are swapped, listeners added or changed start. A listener
// that cannot bind undoes the whole change.
func (n *node) Apply(ctx context.Context, old, next *config.Node) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	oldL, nextL := byName(old.Listeners), byName(next.Listeners)
	var stopped []config.Listener
	for name, lc := range oldL {
		nc, keep := nextL[name]
		if keep && reflect.DeepEqual(nc, lc) {
			continue
		}
		if rl, ok := n.listeners[name]; ok {
			n.stopListener(rl)
			delete(n.listeners, name)
			stopped = append(stopped, lc)
		}
	}
	n.router.SetRoutes(next.Routes)
	n.forwarder.SetConnections(next.Connections)
	var started []string
	for _, lc := range next.Listeners {
		if oc, ok := oldL[lc.Name]; (ok && reflect.DeepEqual(oc, lc)) || lc.Disabled {
			continue
		}
		rl, err := n.bindListener(lc)
		if err != nil {
			// Undo: stop what started, restore the old routes,
			// connections and listeners.
			for _, name := range started {
				n.stopListener(n.listeners[name])
				delete(n.listeners, name)
			}
			n.router.SetRoutes(old.Routes)
			n.forwarder.SetConnections(old.Connections)
			for _, oc := range stopped {
				if orl, berr := n.bindListener(oc); berr == nil {
					n.listeners[oc.Name] = orl
					n.runListener(orl)
				} else {
					n.log.WithError(berr).WithField("listener", oc.Name).Error("could not restore listener after a failed change")
				}
			}
			return &liveconfig.Invalid{Fields: map[string]string{"address": fmt.Sprintf("cannot listen on %s: %v", lc.Address, err)}}
		}
		n.listeners[lc.Name] = rl
		if n.lctx != nil {
			n.runListener(rl)
		}
		started = append(started, lc.Name)
	}
	n.log.WithField("listeners", len(n.listeners)).Info("live configuration applied")
	return nil
}

func byName(list []config.Listener) map[string]config.Listener {
	m := make(map[string]config.Listener, len(list))
	for _, l := range list {
		m[l.Name] = l
	}
	return m
}

// listenerStates reports every configured listener's state.
func (n *node) listenerStates() map[string]web.ListenerState {
	out := map[string]web.ListenerState{}
	for _, lc := range n.live.Current().Listeners {
		out[lc.Name] = web.ListenerState{State: "disabled"}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, rl := range n.listeners {
		st := web.ListenerState{State: "starting", Sessions: rl.l.Sessions()}
		select {
		case <-rl.l.Ready():
			st.State, st.Address = "running", rl.l.Addr().String()
		default:
		}
		out[name] = st
	}
	return out
}

// Package keeper keeps a service registered in etcd and tells it, early and
// truthfully, when that registration is at risk.
//
// A Keeper grants a lease, writes the registered keys attached to it, renews
// it, and heals the registration by itself after faults: it first renews the
// old lease (a restarted cluster keeps it, and a stable lease ID spares
// watchers churn) and grants a new lease and writes every key again only
// once the server said the old lease is gone.
//
// # Timing model
//
// When a renewal sent at local monotonic time s succeeds with TTL t, the
// server cannot expire the lease before s+t-b, where b bounds one leg of
// the path (through etcd's gRPC proxy a reply may carry a renewal the
// proxy sent upstream just before the keepalive reached it): the longest
// recent round trip of a unary call, which goes all the way to etcd on
// every path. The keeper's local deadline is D = s + t - b - Margin: the
// send time, never the receive time (deadlineLocked says why it holds on
// every path). A renewal is due as late as the degrade threshold allows,
// less a reply's room (half the renew timeout, so that a hedge past a
// silent member is answered in time, or what the path's replies take where
// that is longer) and a 64th for what the path adds, on a grid the keepers
// of one client share (see Transport; each process's grid has a phase of
// its own, so that processes whose clocks agree do not renew in one burst):
// 0.418 t with the defaults, no more often than etcd's own KeepAlive renews
// at any t from 4s (Config.RenewalInterval). Each attempt has its
// own deadline (the renew timeout, never past D), so an attempt stuck on a
// silent member is abandoned, and while a keepalive has no reply a fresh
// one goes out every third of the renew timeout on a new stream, which the
// client's balancer sends to the next member (two in flight at most): one
// silent member of three does not even degrade the keeper. Failed attempts
// are retried with exponential backoff and jitter, shortened so that a
// last attempt still fits before D.
//
// The keeper learns its path as TCP learns a round trip (path.go): the
// renew timeout is the latency its keepalives show (srtt + 4×rttvar, at
// least RenewTimeout; before the first, the bound its unary calls show),
// so a far link is no timeout. It learns the
// path at Start: keepalives in a row until three are answered at once (a
// few round trips) or one is held, each allowed 2/3 TTL meanwhile. A path
// that holds keepalives and answers them on a schedule of its own, as
// etcd's gRPC proxy does, is told by its replies: the keeper learns the
// schedule and sends each keepalive just before the next answer, sends no
// more than the proxy's own renewals answer, and does not hedge within an
// attempt; the attempt after a failed one leaves a stream its keepalive
// still waits on, and without a live lease it is hedged once per wait
// bound, so a stream gone silent never holds the keeper. When it first sees the hold,
// and whenever a renewal proves a D too near for Healthy (D allows for
// the longest recent unary call), it asks LeaseTimeToLive, whose
// rounded-down seconds from the call's send time bound the server's
// expiry on every path. Where
// the path cannot renew the lease more often, the degrade threshold of the
// cycle is lowered to what the path leaves (never below RenewTimeout); a
// reply later than the path has shown is a fault, and is dated by the
// path's previous answer (deadlineLocked). A reply to a keepalive given up
// at its timeout still renews the lease, or says it is gone. Nothing of
// this is configured, and nothing is told by address or name.
//
// # Transport
//
// The keepers made with one *clientv3.Client share its hub, created by the
// first New and ended by the last Close. It sends the keepalives of all of
// them on one long-lived LeaseKeepAlive stream, as etcd's own lessor does,
// so the cluster pays per registration what etcd's own KeepAlive costs it,
// and, for the keepers with WatchKeys, watches their keys with one watch.
// Each keepalive still has its own deadline and send time; replies go to requests by lease ID,
// in the order etcd answers a stream. A keepalive overdue by a third of
// RenewTimeout goes again on a new stream, which becomes the stream of
// every keepalive after it; the overdue stream ends once nothing waits on
// it, so a silent member never holds the client's renewals hostage. The
// renewal grid makes the keepers due within one step renew together: one
// write carries their keepalives, and etcd reads and answers them in one
// go, once all of them are queued. Its step is an eighth of the renewal
// interval, or as large a part of it as keeps its points a second or more
// apart (1.05s at a TTL of 10s), so that a client's keepers renew in fewer
// bursts than etcd's own KeepAlive sends, on its 500ms tick; it derives
// from the configuration alone, so that keepers that learned different
// paths still share it.
//
// Once no live lease is left to protect, a request is always in flight:
// each attempt stays outstanding for its backoff, sends a fresh keepalive
// every Backoff.BaseDelay while none is answered (a member without a
// leader holds a keepalive until it looks for one again, once per election
// timeout), and the next attempt starts when it ends. While the client's
// connection is in transient failure, the keeper asks gRPC to reconnect
// every Backoff.BaseDelay instead of after gRPC's own backoff, which grows
// to two minutes; once the connection is back, the next attempt starts at
// once. So the keeper is healthy again within a round trip or two of etcd
// answering again, with a client built with default options.
//
// # States
//
//	idle --Start ok--> healthy --failures or time low--> degraded
//	healthy, degraded --deadline D, lease gone, permanent error--> failed
//	degraded, failed --renewed or re-granted, every key written--> healthy
//	any --Drain--> draining --Close--> closed
//	any --Close--> closed
//
// Healthy: the lease is confirmed alive and every key is written. Degraded:
// the lease is alive by D, but DegradeAfter attempts in a row failed or less
// than DegradeThreshold is left before D; stop accepting writes. Failed: the
// registration must be assumed gone; recovery goes on unless
// DisableRecovery is set. Draining: a planned shutdown (Drain) withdrew the
// keys; the service serves out its drain delay with writes open, and only
// Close changes the state.
//
// # Discovery and shutdown
//
// Package naming registers an instance in etcd's naming format, for gRPC
// clients that dial etcd:///service through etcd's resolver; the keeper
// keeps and heals that key like any other. Drain is the planned shutdown:
// deregister, serve on for a delay with writes open, stop the service,
// revoke. Package grpchealth keeps a health server in step, by default
// SERVING through etcd outages (static stability) and NOT_SERVING while
// draining; package gate refuses writes while the registration is at risk.
//
// # Guarantees
//
//   - State only reads: it is computed against D when it is asked, so after
//     a pause of the process (GC, SIGSTOP, a suspended VM) it says Failed as
//     soon as D has passed, even before the late timers fire; the timers
//     move the state and report the transition, dated D. It never reports Healthy
//     or Degraded after D without a later successful renewal.
//   - Failures shorter than the time left before D never make the keeper
//     Failed.
//   - Transitions, key events and attempts reach the callbacks and
//     observers in order, one at a time, from a goroutine that holds no
//     lock of the keeper; a slow callback delays only later callbacks,
//     never an attempt, and a panicking one is recovered and logged.
//   - Callbacks and observers may call any method of the keeper. Close
//     called from one of them returns once the lease is revoked: it cannot
//     wait for the callback it is called from, nor for those queued after
//     it, which run once that callback returns.
//   - Close honours its context: it cancels the work in flight (attempts,
//     watches, the writes of Register and Deregister, whatever contexts
//     their callers passed), waits for it, revokes the lease (the server
//     deletes its keys at once) and waits for the callbacks queued, all
//     within its context, and leaves no goroutine behind once they
//     returned.
//   - Register and Deregister wait for at most one transaction of a
//     rewrite of every key in flight, never for all of it.
//   - Renewals are scheduled with timers: a keeper between renewals costs a
//     timer, not a goroutine, with its keys watched or not. The hub of a
//     client costs one goroutine for its renewal stream and, with
//     WatchKeys, one for its watch, however many keepers share it.
//   - Errors are classified (see package errors): errors.Is matches both the
//     kind and the original cause.
//
// # Registration integrity
//
// With Config.WatchKeys (off by default: a watch costs the cluster a stream
// per client that etcd's own KeepAlive does not), from Start on the keeper
// acts on a key deleted or overwritten behind its
// back while it holds its lease (its client's hub watches the smallest key
// range holding the keys of all the client's keepers: keep them under one
// prefix), by the key's Policy: Restore
// (the default) writes it back at once, with the next write the cluster
// sees; ReportOnly leaves it and reports it; Exclusive never overwrites
// another holder. Each change reaches Callbacks.OnKeyEvent as a KeyEvent
// that says what happened and who holds the key now. Two keepers restoring
// one key against each other back off like failed attempts. When the watch
// breaks (a compacted history after a long disconnection, a lost leader, an
// error) the keeper reads its keys again and acts on what it finds, so no
// change goes unnoticed; changes that came and went while it was cut off
// are seen only by their result.
//
// An exclusive key is written in one transaction, only if it is absent or
// already on the keeper's lease. While another holder has it, Register and
// Token return a *KeyTakenError (errors.Is(err, ErrKeyTaken)), the keeper
// reports a Taken event and tries again by the backoff, and, with
// WatchKeys, at once when the watch sees the key deleted. Such a key does
// not keep the keeper from Healthy: the lease and the other keys are fine;
// ask Token whether this keeper holds it.
//
// A lease is not a lock. The holder of an exclusive key can be paused (GC,
// SIGSTOP, a suspended VM) past its lease's expiry, another keeper takes
// the key, and the first one wakes up still believing it holds it: its
// next write to a database or a queue races the new holder's. Token returns
// a fencing token, the lease and the key's create revision; a new holder
// always gets a higher revision, so a system that keeps the highest token
// it accepted can refuse the stale holder's write. Pass it along with
// every write that must be exclusive.
//
// # Secure clusters
//
// The keeper uses the client as it is configured: TLS, client
// certificates, a user and password, or the common name of the client
// certificate as the user. What etcd refuses is reported as
// PermissionDenied: a wrong password, a permission the user's role lacks,
// a TLS handshake that refused a certificate. Such an error makes the
// keeper Failed at once (Start returns it at the first refusal) and is
// retried at most once per Backoff.MaxDelay, never in a hot loop, also when
// an attempt after it gets no answer at all (a timeout); once an
// operator grants the permission back, the next attempt heals the
// registration. etcd (v3.7) refuses to renew a lease when the user may no
// longer write one of its keys, so a revoked permission shows at the next
// renewal. A key the role may not write is refused at Register and never
// joins the lease. One refused while the keeper writes its keys again (at
// Start, on a new lease) stays registered and is reported (a KeyEvent with
// Change Refused; Token returns the refusal); the other keys stay
// registered and the keeper Healthy, and it tries the key again by the
// backoff, at most once per Backoff.MaxDelay, until it is written
// (Acquired). Only when every key is refused is the fault not in the keys:
// the keeper is then Failed.
//
// With a password, etcd's client authenticates again at every stream it
// opens, which costs the server a bcrypt check and a raft write. The hub's
// one renewal stream authenticates once, when it opens, and a new one
// opens only after an error or an overdue keepalive. A client identified by
// its certificate's common name needs no authentication.
//
// With TLS 1.3 a server checks the client's certificate after the client's
// handshake is done, so a refused client certificate may reach the client
// as a dropped connection before the server's alert: the keeper then
// reports ClusterUnreachable until an attempt reads the alert.
//
// # Non-guarantees
//
//   - A lease is not a lock. A process paused past D can still act after
//     its lease expired; where exclusivity matters, pass the key's revision
//     with the lease ID as a fencing token to the systems you write to.
//   - D assumes the local monotonic clock runs at nearly the server's rate;
//     Margin absorbs small differences only.
//   - A change to a key that another client made and undid while the
//     keeper's watch was broken is not seen: after a break the keeper
//     compares the keys as they are with what it wrote.
//   - A key written with Register while the keeper holds no live lease is
//     written by the next Start or recovery, not at once.
package keeper

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
// server cannot expire the lease before s+t. The keeper's local deadline is
// D = s + t - Margin: the send time, never the receive time. Renewals run
// every t/3, counted from the send time of the last successful one; each attempt has its own deadline
// (RenewTimeout, never past D), so an attempt stuck on a silent member is
// abandoned, and a keepalive with no reply after a third of RenewTimeout is
// hedged by a second one on a new stream, which the client's balancer sends
// to the next member: one silent member of three does not even degrade the
// keeper. Failed attempts are retried with exponential backoff and jitter,
// shortened so that a last attempt still fits before D. A lost connection
// that comes back triggers an attempt at once instead of waiting out the
// backoff; and once no live lease is left to protect, each attempt stays
// outstanding for the whole backoff instead of the keeper waiting idle, so
// a member that answers again after a silent partition answers that
// request at once.
//
// # States
//
//	idle --Start ok--> healthy --failures or time low--> degraded
//	healthy, degraded --deadline D, lease gone, permanent error--> failed
//	degraded, failed --renewed or re-granted, every key written--> healthy
//	any --Close--> closed
//
// Healthy: the lease is confirmed alive and every key is written. Degraded:
// the lease is alive by D, but DegradeAfter attempts in a row failed or less
// than DegradeThreshold is left before D; stop accepting writes. Failed: the
// registration must be assumed gone; recovery goes on unless
// DisableRecovery is set.
//
// # Guarantees
//
//   - State is computed against D when it is asked: after a pause of the
//     process (GC, SIGSTOP, a suspended VM) it says Failed as soon as D has
//     passed, even before the late timers fire. It never reports Healthy or
//     Degraded after D without a later successful renewal.
//   - Failures shorter than the time left before D never make the keeper
//     Failed.
//   - Transitions reach the callbacks in order, one at a time, from a
//     goroutine that holds no lock of the keeper; a slow callback delays only
//     later callbacks, a panicking one is recovered and logged.
//   - Renewals are scheduled with timers: a keeper between renewals costs a
//     timer, not a goroutine. The one exception is a client with a password
//     (see Secure clusters).
//   - Close stops every timer, revokes the lease (the server deletes its keys
//     at once) and leaves no goroutine behind once its callbacks returned.
//   - Errors are classified (see package errors): errors.Is matches both the
//     kind and the original cause.
//
// # Secure clusters
//
// The keeper uses the client as it is configured: TLS, client
// certificates, a user and password, or the common name of the client
// certificate as the user. What etcd refuses is reported as
// PermissionDenied: a wrong password, a permission the user's role lacks,
// a TLS handshake that refused a certificate. Such an error makes the
// keeper Failed at once (Start returns it at the first refusal) and is
// retried at most once per Backoff.MaxDelay, never in a hot loop; once an
// operator grants the permission back, the next attempt heals the
// registration. etcd (v3.7) refuses to renew a lease when the user may no
// longer write one of its keys, so a revoked permission shows at the next
// renewal. A key the role may not write is refused at Register and never
// joins the lease; one refused while every key is written again is dropped
// and logged, and the other keys stay registered.
//
// With a password, etcd's client authenticates again at every stream it
// opens, which costs the server a bcrypt check and a raft write. The keeper
// therefore keeps its renewal stream open between renewals on such a
// client (one gRPC goroutine per keeper) and opens a new one only after an
// error or an abandoned attempt. A client identified by its certificate's
// common name needs no authentication and keeps no stream.
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
//   - Keys deleted or overwritten by another client while the lease stays
//     alive are not noticed: the keeper watches its lease, not its keys.
//   - A key written with Register while the keeper holds no live lease is
//     written by the next Start or recovery, not at once.
package keeper

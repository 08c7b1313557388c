package keeper

import (
	"time"
)

// The path's part of the lease loop: what the keeper learns of how its
// path to etcd answers, and the timing it takes from that. Two kinds of
// path answer keepalives differently, and the keeper tells them apart by
// what it sees, never by address or name:
//
//   - A path that answers at once (straight to a member, near or far):
//     every keepalive is answered a round trip after it was sent. The
//     keeper renews as late as the degrade threshold allows (0.418 TTL
//     after the last renewal with the defaults), on the renewal grid
//     (renewalDue), and bounds each attempt by the
//     latency its replies showed (an rttEstimator, floored at the
//     configured RenewTimeout), so a far link is not a timeout.
//   - A path that holds keepalives and answers them on a schedule of its
//     own, as etcd's gRPC proxy does: it renews each lease upstream with a
//     keepalive of its own, a third of the TTL after its last answer on a
//     500 ms tick, and answers every keepalive waiting for that lease when
//     the answer comes, in a burst. A keepalive sent just after an answer
//     waits a whole period, and proves only that the server renewed the
//     lease after it was sent, a period ago. So the keeper learns the
//     period between the answers and sends its keepalive a lead before
//     the next one is due: it is answered at once, by a renewal the server
//     made just after it was sent, and no more keepalives go than the
//     proxy's own renewals answer.
//
// A renewal is held when its reply came later than the path's unary calls
// (which go all the way to etcd) plus holdSlack, counted from the first
// attempt since the last reply: the path waited before answering. Held
// renewals count up and prompt ones down, and heldAfter put the keeper in
// held mode (a keepalive that happens to be sent just before a held path's
// answer is answered promptly too). In held mode a reply sooner than
// holdSlack, which the lead of twice holdSlack rules out on a held path,
// counts towards leaving it; leaveAfter in a row take the keeper out.
// Replies to keepalives given up at their timeout still count (lateReply):
// they say how late the path answers, and renew the lease.
//
// In both, the degrade threshold in force for a renewal cycle is the
// configured one, lowered where the path cannot do better: to the time the
// deadline D leaves once the next renewal is answered as late as the path
// answers it (never below RenewTimeout). A late reply on a path whose
// replies are always late is not a fault; a reply later than that is, and
// the keeper is Degraded. Against a path that holds keepalives the keeper
// does not hedge within an attempt: a second stream joins the wait for the
// same answer. The attempt after a failed one still leaves a stream its
// keepalive waits on (attempt.clean), and one without a live lease sends a
// fresh keepalive once per wait bound.

// pathState is what one keeper learned of its path. Guarded by
// leaseLoop.mu.
type pathState struct {
	ka     rttEstimator  // latency of the first keepalive of each attempt, when answered
	holds  uint8         // held replies in a row, outside held mode
	prompt uint8         // prompt replies in a row, in held mode
	period time.Duration // in held mode, at most the shortest time between the path's answers; zero outside it
	most   time.Duration // in held mode, the longest
	least  time.Duration // in held mode, the shortest period seen
	reach  time.Duration // in held mode, how long its schedule may let the path wait to answer, shown or not (latest)
	seen   uint8         // periods seen in held mode, up to trustAfter
	last   time.Time     // when the last keepalive was answered
	asked  time.Time     // when the first attempt since then began; zero before it
	thr    time.Duration // the degrade threshold for the cycle under way; zero: the configured one
	probe  bool          // in held mode, a probe is due (probeDue)
	ref    time.Duration // in held mode, the longest period (most) when the last probe was due
	proved time.Time     // when the keepalive that D rests on was sent
	known  uint8         // keepalives answered promptly, each the first of its attempt, since the keeper last learned its path, up to learnAfter
	fresh  bool          // the lease was just granted: no keepalive of it answered yet
	second bool          // the next answer is the lease's second: no period ends with it
}

const (
	heldAfter  = 1  // held renewals, less prompt ones, that put the keeper in held mode
	leaveAfter = 8  // prompt replies in a row that take it out
	trustAfter = 16 // periods seen before the longest seen alone bounds the next
)

// probeDue reports whether a renewal just done should be followed by a
// probe of the path's legs (leaseLoop.probe): when the keeper enters held
// mode, when an answer of a held path came more than half the margin later
// after the one before than the longest gap the path had shown at the last
// probe (slower), and after a renewal whose cycle has the lowest degrade
// threshold. etcd's gRPC proxy sends its renewals on its own tick, whatever
// its leg to etcd takes, and answers a round trip later, so a leg that
// became slower by some time shows once as a gap longer by as much; a
// change of less than half the margin is within what the margin absorbs
// beside b, which is a whole round trip where D needs one leg. Only in held mode can a reply carry a
// renewal older than its keepalive, and only there does b, which the unary
// calls set, need to follow a leg that became slower since the last one. A
// path whose answers keep their rhythm costs etcd no call beyond the
// proxy's own renewals, as a KeepAlive behind it does.
func (p *pathState) probeDue(base timing) bool {
	if !p.held() {
		p.probe = false
		return false
	}
	if p.thr > 0 && p.thr <= base.renewTimeout {
		// A weak cycle: the keepalive waited so long that the D it
		// proved barely outlasts the next answer. The server's word may
		// give more.
		p.probe = true
	}
	due := p.probe
	if due {
		p.ref = p.most
	}
	p.probe = false
	return due
}

// holdSlack is how much longer than the path's unary calls a keepalive may
// take before it counts as held: half the configured renew timeout, at
// least 20 ms.
func holdSlack(base timing) time.Duration {
	return max(base.renewTimeout/2, 20*time.Millisecond)
}

// learnAfter is how many keepalives answered promptly (no later than the
// path's unary calls take, and holdSlack), each the first of its attempt,
// tell a path that answers at once.
const learnAfter = 3

// learning reports whether the keeper does not know its path yet: it has
// neither seen it hold a keepalive nor had learnAfter prompt samples. Until
// it knows, a keepalive may wait up to a period of a path that holds
// keepalives (learnWait) before it is late: the first renewals of a lease
// through etcd's gRPC proxy wait for the proxy's own schedule, and were
// otherwise timed out and counted as failures before the keeper could see
// that schedule.
func (p *pathState) learning() bool {
	return !p.held() && p.known < learnAfter
}

// relearn makes a keeper that does not renew on a held path's schedule
// learn its path again, as at Start: a keepalive it gave up at its timeout
// was answered after all (lateReply). That is what a path that holds
// keepalives does to a keeper that took it for one that answers at once
// (it learned the path through a member, or before a gRPC proxy held its
// keepalives): each keepalive waits past the attempt's bound for the
// proxy's next answer, which comes to the keepalives of several attempts
// at once, after the failures that make it look like the end of an
// outage (answered), and the keeper would never see the hold. While it
// learns, a keepalive may wait for learnWait, and the first that waits for
// a held answer puts the keeper in held mode. On a path that does answer
// at once, learning again costs the few keepalives it takes to see
// learnAfter prompt replies, after a reply that came too late.
func (p *pathState) relearn() {
	if !p.held() {
		p.known, p.holds = 0, 0
	}
}

// learnWait is how long a keepalive may wait for its reply while the
// keeper learns its path: the longest period answerPeriod takes.
func learnWait(ttl time.Duration) time.Duration { return ttl * 2 / 3 }

// held reports whether the keeper renews on the schedule of a path that
// holds keepalives.
func (p *pathState) held() bool { return p.period > 0 }

// lead is how long before the path's next answer the keeper sends its
// keepalive, in held mode: twice holdSlack, so that the keepalive is there
// before the answer even when the path's schedule drifts. It need not
// reach the proxy before the proxy's own keepalive goes upstream: one that
// comes while that is on its way gets its answer, a renewal up to one leg
// older, which D allows for (deadlineLocked). A reply that comes sooner
// than holdSlack was not held, and counts towards leaving held mode.
func (p *pathState) lead(base timing, _ time.Duration) time.Duration {
	return 2 * holdSlack(base)
}

// asking records that a renewal attempt begins at now.
func (p *pathState) asking(now time.Time) {
	if p.asked.IsZero() {
		p.asked = now
	}
}

// answered takes in a keepalive sent at sent and answered at at, on a path
// whose unary calls take up to b, for a lease of ttl. first says the reply
// answered the first keepalive of its attempt: only then is its latency a
// sample (Karn's rule). fails is how many attempts failed since the last
// answer, a late reply's own not counted. Any on a path that answers at
// once, more than one on a path that holds keepalives (an attempt that
// timed out while the path still held its keepalive is no outage), make an
// outage: the wait and the gap span it, and tell nothing of how the path
// answers. Counted, the first reply after a cluster came back put a keeper
// straight to a member in held mode, renewing every eighth of the TTL until
// it left. Whether the path held the renewal counts from the first attempt
// since the last answer: attempts that timed out on a path that answers
// late, and a fresh keepalive on another stream answered at once, say
// nothing of how long the path waited to answer.
func (p *pathState) answered(sent, at time.Time, first bool, fails int, ttl time.Duration, base timing, b time.Duration) {
	prompt := b + holdSlack(base) // no later than an answer the path did not hold
	if first {
		p.ka.sample(at.Sub(sent))
		if at.Sub(sent) <= prompt && p.known < learnAfter {
			p.known++
		}
	}
	asked := p.asked
	if asked.IsZero() || asked.After(sent) {
		asked = sent
	}
	p.asked = time.Time{}
	held := at.Sub(asked) > prompt
	gap, hadLast := at.Sub(p.last), !p.last.IsZero()
	if p.fresh {
		// The first answer for a new lease: a path that holds keepalives
		// starts the lease's schedule with it, so the time since the grant
		// is no period.
		p.fresh, p.last, p.asked = false, at, time.Time{}
		return
	}
	if fails > 1 || fails > 0 && !p.held() {
		p.last = at
		return
	}
	if hadLast && gap < holdSlack(base) {
		// Another reply of the same answer: a path that holds keepalives
		// answers every one waiting, given up or not, at once.
		return
	}
	if p.second && !p.held() {
		// The second answer for a new lease: etcd's gRPC proxy sends its
		// first renewal of a lease upstream again on its next tick when
		// etcd is slow to answer it (many leases granted at once), and
		// answers both: a gap of one tick, far shorter than its period,
		// which entered held mode with a period that made every
		// keepalive wait out the next answer. The period is learned from
		// the gaps after it.
		p.second, p.last = false, at
		return
	}
	p.second = false
	p.last = at
	switch {
	case !p.held() && !held:
		// A keepalive sent just before a held path's answer is answered at
		// once too: a prompt reply takes back one held, not all.
		if p.holds > 0 {
			p.holds--
		}
	case !p.held():
		if p.holds++; p.holds >= heldAfter && hadLast {
			// One gap says little of the shortest period: etcd's gRPC
			// proxy answers a third of the TTL or up to 500 ms later,
			// one or the other at random. Start from two thirds of it,
			// so that the next keepalive is sent before the next answer
			// whichever the gap was; a shorter gap lowers it at once.
			p.most = answerPeriod(gap, ttl)
			p.least = p.most
			p.period, p.prompt, p.seen = p.most*2/3, 0, 0
			// Probe at once (probeDue): the keepalive that showed the
			// hold waited a whole period, so the D it proves may not
			// last until the next answer; the server's own word may.
			p.probe = true
		}
	case at.Sub(asked) <= holdSlack(base):
		// Answered sooner than the lead before the answer it was sent
		// for: nothing held it.
		if p.prompt++; p.prompt >= leaveAfter {
			p.period, p.most, p.least, p.reach, p.holds = 0, 0, 0, 0, 0
		}
	default:
		p.prompt = 0
		if at.Sub(asked) < gap/2 && gap >= p.period*7/4 {
			// The cycle's first keepalive came after the answer it was
			// sent for and waited for the next: the gap is two periods.
			// (Had it waited half the gap or more, no answer can have come
			// between: the gap is one period, however far off the
			// estimate was. A later keepalive of the cycle, sent after the
			// first timed out, says nothing: the first still waited.)
			return
		}
		if p.seen < trustAfter {
			p.seen++
		}
		// One period: the path answers between period and most after its
		// last answer. etcd's gRPC proxy renews on the first tick of its
		// lessor a third of the TTL after its last answer; the tick is a
		// 500 ms sleep after each round, so it drifts against the answers,
		// and the gap is half a tick longer than the third most of the
		// time, the third itself only when a round ran late. A keepalive
		// sent for the usual gap misses the rare short one, and waits a
		// whole period more: past the degrade threshold at short TTLs. So
		// period follows a shorter gap at once and never drifts back up
		// towards the usual gap (it starts at two thirds of a gap, below
		// the shortest): a keepalive sent early only waits longer for the
		// same answer. While learning it only rises to two thirds of the
		// longest gap. most follows a longer gap at once and drifts back
		// slowly.
		gap = answerPeriod(gap, ttl)
		p.period = min(p.period, gap)
		if p.seen < trustAfter {
			// Still learning: a gap far shorter than the path's period
			// (two answers of one renewal the proxy sent twice while etcd
			// was slow to answer the first, at a lease's start) must not
			// set the period for good. Two thirds of the longest gap is
			// no more than the shortest of etcd's gRPC proxy at every TTL
			// from 3 s (1 s of 1.5 s, 2.67 s against 3.33 s at 10 s).
			p.period = max(p.period, answerPeriod(max(gap, p.most), ttl)*2/3)
		}
		if gap > p.ref+base.margin/2 {
			// Later than the path answered when b was last measured:
			// its leg to etcd may have become slower (probeDue).
			p.probe = true
		}
		if gap > p.most {
			p.most = gap
		} else {
			p.most += (gap - p.most) / 64
		}
		// least mirrors most: a shorter gap at once, a longer one slowly,
		// so that one answer the keeper saw late does not lower it for
		// good.
		if gap < p.least {
			p.least = gap
		} else {
			p.least += (gap - p.least) / 64
		}
		p.reach = min(ttl/3+b+lessorTick, p.least*3/2)
	}
}

// answerPeriod is the path's period, given that gap is a whole number of
// periods, bounded to between an eighth and two thirds of the TTL: etcd's
// gRPC proxy answers a third of the TTL after its last answer, on a 500 ms
// tick, a round trip to etcd later, so half the TTL and more is a period
// at short TTLs (1.5 s at a TTL of 3 s, 2 s over a 0.5 s round trip), and a
// path that answers less often than two thirds of a TTL leaves a keepalive
// sent just after an answer no time before D.
func answerPeriod(gap, ttl time.Duration) time.Duration {
	for gap > ttl*2/3 {
		gap /= 2
	}
	return max(gap, ttl/8)
}

// latest is how long after its last answer a path that holds keepalives
// answers next at the latest: the longest period seen, and no less than
// its schedule allows (reach). etcd's gRPC proxy renews a lease a third of
// the TTL after its upstream answer, on the first tick of its lessor from
// then, and answers a round trip later: up to lessorTick later than the
// third and the round trip, and never more than half as long again as the
// shortest period it showed (the tick is no more than half the third from
// a TTL of 3 s up). Which gap it shows depends on how its rounds fall
// against the round trip to etcd: against etcd 3.5 on loopback the third
// came for runs of 16 and more, then the tick later once, and a keeper that
// took the longest gap it saw for the latest went Degraded for the 350 ms
// the answer came after it (TestProxyAnswersLateAtTimes). Until the path
// showed trustAfter periods, half as long again as the longest seen.
func (p *pathState) latest() time.Duration {
	if p.seen < trustAfter {
		return max(p.most, p.period) * 3 / 2
	}
	return max(p.most, p.reach)
}

// lessorTick is how often clientv3's lessor sends the keepalives due, and
// so etcd's gRPC proxy, which renews its leases with one.
const lessorTick = 500 * time.Millisecond

// overdue reports whether a reply at at, on a path that holds keepalives,
// comes after the latest answer its schedule allows: the longest period
// after the last answer, and holdSlack.
func (p *pathState) overdue(at time.Time, base timing) bool {
	return p.held() && !p.last.IsZero() && at.After(p.last.Add(p.latest()+holdSlack(base)))
}

// waitBound is how long the path normally takes to answer a keepalive, and
// so what bounds a renewal attempt: a held path's longest period and the
// lead, so that a keepalive that just missed an answer is not taken for
// lost; else the latency its replies show (before the first, its unary
// calls' bound, prior: a keepalive takes the same path, and a link slower
// than the renew timeout would otherwise never answer one in time to be
// learned); at least the configured renew timeout. It is not backed off
// after a timeout, as RFC 6298's timer is: a renewal that timed out is a
// failure, and the second in a row makes the keeper Degraded, so a longer
// timeout after the first would delay that signal. The attempt never runs
// past D either.
func (p *pathState) waitBound(base timing, b, prior time.Duration) time.Duration {
	if p.held() {
		return p.latest() + p.lead(base, b) + holdSlack(base)
	}
	if p.ka.n == 0 {
		return max(base.renewTimeout, prior)
	}
	return max(base.renewTimeout, p.ka.bound())
}

// hedgeAfter is how long a keepalive waits for its reply before a fresh
// one goes on a new stream, with a live lease: a third of the attempt's
// timeout, or the latency the path's replies show, whichever is longer, so
// that a far link is not hedged at every renewal. Zero means never: a path
// that holds keepalives answers a second stream no sooner than the first,
// and against etcd's gRPC proxy it only joins the wait for the proxy's
// next renewal.
func (p *pathState) hedgeAfter(timeout time.Duration) time.Duration {
	if p.held() {
		return 0
	}
	return max(timeout/3, p.ka.srtt+2*p.ka.rttvar)
}

// next returns when the renewal after one whose keepalive was sent at sent
// and answered at at is due, and sets the degrade threshold for the cycle:
// tm is the timing in force (its margin holds b, its renew timeout the
// attempt's bound), base the configured one, d the new deadline D.
//
// Where the path answers on its own (not held), the next renewal is
// answered at the latest its reply's bound after it goes, and it goes no
// sooner than at: a renewal due before the reply that scheduled it came
// (a far link, whose round trip is longer than the grid leaves) goes at
// once, and its answer counts from then.
func (p *pathState) next(sent, at time.Time, ttl time.Duration, tm, base timing, b time.Duration, d time.Time, phase time.Duration) time.Time {
	var due, answer time.Time // when the next renewal goes, and when it is answered at the latest
	switch {
	case p.learning():
		// The path is not known yet: renew at once, so that the keeper
		// learns it within a few round trips of Start. A path that
		// answers at once is known after learnAfter of them; one that
		// holds keepalives holds the second (the first of a new lease it
		// answers on its own tick), and the keeper renews on its schedule
		// from then on. Until then a reply may take learnWait.
		due = sent
		answer = later(due, at).Add(max(tm.renewTimeout, learnWait(ttl)))
	case p.fresh || p.ka.n == 0:
		// No keepalive of the lease answered yet: the path may answer far
		// later than it answers a grant (a gRPC proxy answers the first
		// on its own tick, and starts the lease's schedule with it).
		// Renew half way to the degrade threshold, so that a late first
		// answer is no fault.
		due = earlier(renewalDue(sent, ttl, tm, base, tm.renewTimeout, phase), sent.Add((d.Sub(sent)-base.threshold)/2))
		answer = later(due, at).Add(tm.renewTimeout)
	case p.held():
		due = p.last.Add(p.period - p.lead(base, b))
		answer = p.last.Add(p.latest() + holdSlack(base))
	default:
		due = renewalDue(sent, ttl, tm, base, p.ka.bound(), phase)
		answer = later(due, at).Add(replyRoom(p.ka.bound(), base))
	}
	p.thr = 0
	if left := d.Sub(answer); left < base.threshold {
		p.thr = max(left, base.renewTimeout)
	}
	return due
}

package gate_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/leasekeeper/leasekeeper/keeper/gate"
)

// flag is a Writable a test flips; in a service it is the *keeper.Keeper.
type flag bool

func (f *flag) Writable() bool { return bool(*f) }

// Refuse writes over HTTP while the registration is at risk; reads pass.
func ExampleMiddleware() {
	writable := flag(false) // the keeper is degraded
	h := gate.Middleware(&writable, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, httptest.NewRequest(method, "/items", nil))
		fmt.Println(method, rr.Code)
	}
	writable = true // healthy again
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest(http.MethodPost, "/items", nil))
	fmt.Println(http.MethodPost, rr.Code)
	// Output:
	// GET 200
	// POST 503
	// POST 200
}

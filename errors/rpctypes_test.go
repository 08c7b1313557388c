package errors_test

import (
	stderrors "errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	lkerrors "github.com/leasekeeper/leasekeeper/errors"
)

// etcdValues holds every exported error value of rpctypes with the kind it
// must classify as. TestEveryRPCTypesErrorIsListed keeps it complete.
var etcdValues = map[string]struct {
	err  error
	want lkerrors.Kind
}{
	"ErrAuthFailed":                        {rpctypes.ErrAuthFailed, lkerrors.PermissionDenied},
	"ErrAuthNotEnabled":                    {rpctypes.ErrAuthNotEnabled, lkerrors.InvalidArgument},
	"ErrAuthOldRevision":                   {rpctypes.ErrAuthOldRevision, lkerrors.Unavailable},
	"ErrBadLeaderTransferee":               {rpctypes.ErrBadLeaderTransferee, lkerrors.InvalidArgument},
	"ErrClusterIDMismatch":                 {rpctypes.ErrClusterIDMismatch, lkerrors.InvalidArgument},
	"ErrClusterIdMismatch":                 {rpctypes.ErrClusterIdMismatch, lkerrors.InvalidArgument}, //nolint:staticcheck // deprecated alias, still defined
	"ErrClusterVersionUnavailable":         {rpctypes.ErrClusterVersionUnavailable, lkerrors.Unavailable},
	"ErrCompacted":                         {rpctypes.ErrCompacted, lkerrors.InvalidArgument},
	"ErrCorrupt":                           {rpctypes.ErrCorrupt, lkerrors.Unavailable},
	"ErrDowngradeInProcess":                {rpctypes.ErrDowngradeInProcess, lkerrors.InvalidArgument},
	"ErrDuplicateKey":                      {rpctypes.ErrDuplicateKey, lkerrors.InvalidArgument},
	"ErrEmptyKey":                          {rpctypes.ErrEmptyKey, lkerrors.InvalidArgument},
	"ErrFutureRev":                         {rpctypes.ErrFutureRev, lkerrors.InvalidArgument},
	"ErrGRPCAuthFailed":                    {rpctypes.ErrGRPCAuthFailed, lkerrors.PermissionDenied},
	"ErrGRPCAuthNotEnabled":                {rpctypes.ErrGRPCAuthNotEnabled, lkerrors.InvalidArgument},
	"ErrGRPCAuthOldRevision":               {rpctypes.ErrGRPCAuthOldRevision, lkerrors.Unavailable},
	"ErrGRPCBadLeaderTransferee":           {rpctypes.ErrGRPCBadLeaderTransferee, lkerrors.InvalidArgument},
	"ErrGRPCCanceled":                      {rpctypes.ErrGRPCCanceled, lkerrors.Unavailable},
	"ErrGRPCClusterIDMismatch":             {rpctypes.ErrGRPCClusterIDMismatch, lkerrors.InvalidArgument},
	"ErrGRPCClusterIdMismatch":             {rpctypes.ErrGRPCClusterIdMismatch, lkerrors.InvalidArgument}, //nolint:staticcheck // deprecated alias, still defined
	"ErrGRPCClusterVersionUnavailable":     {rpctypes.ErrGRPCClusterVersionUnavailable, lkerrors.Unavailable},
	"ErrGRPCCompacted":                     {rpctypes.ErrGRPCCompacted, lkerrors.InvalidArgument},
	"ErrGRPCCorrupt":                       {rpctypes.ErrGRPCCorrupt, lkerrors.Unavailable},
	"ErrGRPCDeadlineExceeded":              {rpctypes.ErrGRPCDeadlineExceeded, lkerrors.Timeout},
	"ErrGRPCDowngradeInProcess":            {rpctypes.ErrGRPCDowngradeInProcess, lkerrors.InvalidArgument},
	"ErrGRPCDuplicateKey":                  {rpctypes.ErrGRPCDuplicateKey, lkerrors.InvalidArgument},
	"ErrGRPCEmptyKey":                      {rpctypes.ErrGRPCEmptyKey, lkerrors.InvalidArgument},
	"ErrGRPCFutureRev":                     {rpctypes.ErrGRPCFutureRev, lkerrors.InvalidArgument},
	"ErrGRPCInvalidAuthMgmt":               {rpctypes.ErrGRPCInvalidAuthMgmt, lkerrors.InvalidArgument},
	"ErrGRPCInvalidAuthToken":              {rpctypes.ErrGRPCInvalidAuthToken, lkerrors.PermissionDenied},
	"ErrGRPCInvalidClientAPIVersion":       {rpctypes.ErrGRPCInvalidClientAPIVersion, lkerrors.InvalidArgument},
	"ErrGRPCInvalidDowngradeTargetVersion": {rpctypes.ErrGRPCInvalidDowngradeTargetVersion, lkerrors.InvalidArgument},
	"ErrGRPCInvalidSortOption":             {rpctypes.ErrGRPCInvalidSortOption, lkerrors.InvalidArgument},
	"ErrGRPCKeyNotFound":                   {rpctypes.ErrGRPCKeyNotFound, lkerrors.InvalidArgument},
	"ErrGRPCLeaderChanged":                 {rpctypes.ErrGRPCLeaderChanged, lkerrors.Unavailable},
	"ErrGRPCLearnerNotReady":               {rpctypes.ErrGRPCLearnerNotReady, lkerrors.Unavailable},
	"ErrGRPCLeaseExist":                    {rpctypes.ErrGRPCLeaseExist, lkerrors.InvalidArgument},
	"ErrGRPCLeaseNotFound":                 {rpctypes.ErrGRPCLeaseNotFound, lkerrors.LeaseExpired},
	"ErrGRPCLeaseProvided":                 {rpctypes.ErrGRPCLeaseProvided, lkerrors.InvalidArgument},
	"ErrGRPCLeaseTTLTooLarge":              {rpctypes.ErrGRPCLeaseTTLTooLarge, lkerrors.InvalidArgument},
	"ErrGRPCMemberBadURLs":                 {rpctypes.ErrGRPCMemberBadURLs, lkerrors.InvalidArgument},
	"ErrGRPCMemberExist":                   {rpctypes.ErrGRPCMemberExist, lkerrors.InvalidArgument},
	"ErrGRPCMemberNotEnoughStarted":        {rpctypes.ErrGRPCMemberNotEnoughStarted, lkerrors.Unavailable},
	"ErrGRPCMemberNotFound":                {rpctypes.ErrGRPCMemberNotFound, lkerrors.Unknown},
	"ErrGRPCMemberNotLearner":              {rpctypes.ErrGRPCMemberNotLearner, lkerrors.InvalidArgument},
	"ErrGRPCNoInflightDowngrade":           {rpctypes.ErrGRPCNoInflightDowngrade, lkerrors.InvalidArgument},
	"ErrGRPCNoLeader":                      {rpctypes.ErrGRPCNoLeader, lkerrors.Unavailable},
	"ErrGRPCNoSpace":                       {rpctypes.ErrGRPCNoSpace, lkerrors.NoSpace},
	"ErrGRPCNotCapable":                    {rpctypes.ErrGRPCNotCapable, lkerrors.Unavailable},
	"ErrGRPCNotLeader":                     {rpctypes.ErrGRPCNotLeader, lkerrors.Unavailable},
	"ErrGRPCNotSupportedForLearner":        {rpctypes.ErrGRPCNotSupportedForLearner, lkerrors.Unavailable},
	"ErrGRPCPeerURLExist":                  {rpctypes.ErrGRPCPeerURLExist, lkerrors.InvalidArgument},
	"ErrGRPCPermissionDenied":              {rpctypes.ErrGRPCPermissionDenied, lkerrors.PermissionDenied},
	"ErrGRPCPermissionNotGiven":            {rpctypes.ErrGRPCPermissionNotGiven, lkerrors.PermissionDenied},
	"ErrGRPCPermissionNotGranted":          {rpctypes.ErrGRPCPermissionNotGranted, lkerrors.PermissionDenied},
	"ErrGRPCRequestTooLarge":               {rpctypes.ErrGRPCRequestTooLarge, lkerrors.InvalidArgument},
	"ErrGRPCRequestTooManyRequests":        {rpctypes.ErrGRPCRequestTooManyRequests, lkerrors.RateLimited},
	"ErrGRPCRoleAlreadyExist":              {rpctypes.ErrGRPCRoleAlreadyExist, lkerrors.InvalidArgument},
	"ErrGRPCRoleEmpty":                     {rpctypes.ErrGRPCRoleEmpty, lkerrors.InvalidArgument},
	"ErrGRPCRoleNotFound":                  {rpctypes.ErrGRPCRoleNotFound, lkerrors.PermissionDenied},
	"ErrGRPCRoleNotGranted":                {rpctypes.ErrGRPCRoleNotGranted, lkerrors.PermissionDenied},
	"ErrGRPCRootRoleNotExist":              {rpctypes.ErrGRPCRootRoleNotExist, lkerrors.InvalidArgument},
	"ErrGRPCRootUserNotExist":              {rpctypes.ErrGRPCRootUserNotExist, lkerrors.InvalidArgument},
	"ErrGRPCStopped":                       {rpctypes.ErrGRPCStopped, lkerrors.Unavailable},
	"ErrGRPCTimeout":                       {rpctypes.ErrGRPCTimeout, lkerrors.Unavailable},
	"ErrGRPCTimeoutDueToConnectionLost":    {rpctypes.ErrGRPCTimeoutDueToConnectionLost, lkerrors.Unavailable},
	"ErrGRPCTimeoutDueToLeaderFail":        {rpctypes.ErrGRPCTimeoutDueToLeaderFail, lkerrors.Unavailable},
	"ErrGRPCTimeoutWaitAppliedIndex":       {rpctypes.ErrGRPCTimeoutWaitAppliedIndex, lkerrors.Unavailable},
	"ErrGRPCTooManyLearners":               {rpctypes.ErrGRPCTooManyLearners, lkerrors.InvalidArgument},
	"ErrGRPCTooManyOps":                    {rpctypes.ErrGRPCTooManyOps, lkerrors.InvalidArgument},
	"ErrGRPCUnhealthy":                     {rpctypes.ErrGRPCUnhealthy, lkerrors.Unavailable},
	"ErrGRPCUserAlreadyExist":              {rpctypes.ErrGRPCUserAlreadyExist, lkerrors.InvalidArgument},
	"ErrGRPCUserEmpty":                     {rpctypes.ErrGRPCUserEmpty, lkerrors.InvalidArgument},
	"ErrGRPCUserNotFound":                  {rpctypes.ErrGRPCUserNotFound, lkerrors.PermissionDenied},
	"ErrGRPCValueProvided":                 {rpctypes.ErrGRPCValueProvided, lkerrors.InvalidArgument},
	"ErrGRPCWatchCanceled":                 {rpctypes.ErrGRPCWatchCanceled, lkerrors.Unknown},
	"ErrGRPCWrongDowngradeVersionFormat":   {rpctypes.ErrGRPCWrongDowngradeVersionFormat, lkerrors.InvalidArgument},
	"ErrInvalidAuthMgmt":                   {rpctypes.ErrInvalidAuthMgmt, lkerrors.InvalidArgument},
	"ErrInvalidAuthToken":                  {rpctypes.ErrInvalidAuthToken, lkerrors.PermissionDenied},
	"ErrInvalidDowngradeTargetVersion":     {rpctypes.ErrInvalidDowngradeTargetVersion, lkerrors.InvalidArgument},
	"ErrInvalidSortOption":                 {rpctypes.ErrInvalidSortOption, lkerrors.InvalidArgument},
	"ErrKeyNotFound":                       {rpctypes.ErrKeyNotFound, lkerrors.InvalidArgument},
	"ErrLeaderChanged":                     {rpctypes.ErrLeaderChanged, lkerrors.Unavailable},
	"ErrLeaseExist":                        {rpctypes.ErrLeaseExist, lkerrors.InvalidArgument},
	"ErrLeaseNotFound":                     {rpctypes.ErrLeaseNotFound, lkerrors.LeaseExpired},
	"ErrLeaseProvided":                     {rpctypes.ErrLeaseProvided, lkerrors.InvalidArgument},
	"ErrLeaseTTLTooLarge":                  {rpctypes.ErrLeaseTTLTooLarge, lkerrors.InvalidArgument},
	"ErrMemberBadURLs":                     {rpctypes.ErrMemberBadURLs, lkerrors.InvalidArgument},
	"ErrMemberExist":                       {rpctypes.ErrMemberExist, lkerrors.InvalidArgument},
	"ErrMemberLearnerNotReady":             {rpctypes.ErrMemberLearnerNotReady, lkerrors.Unavailable},
	"ErrMemberNotEnoughStarted":            {rpctypes.ErrMemberNotEnoughStarted, lkerrors.Unavailable},
	"ErrMemberNotFound":                    {rpctypes.ErrMemberNotFound, lkerrors.Unknown},
	"ErrMemberNotLearner":                  {rpctypes.ErrMemberNotLearner, lkerrors.InvalidArgument},
	"ErrNoInflightDowngrade":               {rpctypes.ErrNoInflightDowngrade, lkerrors.InvalidArgument},
	"ErrNoLeader":                          {rpctypes.ErrNoLeader, lkerrors.Unavailable},
	"ErrNoSpace":                           {rpctypes.ErrNoSpace, lkerrors.NoSpace},
	"ErrNotCapable":                        {rpctypes.ErrNotCapable, lkerrors.Unavailable},
	"ErrNotLeader":                         {rpctypes.ErrNotLeader, lkerrors.Unavailable},
	"ErrPeerURLExist":                      {rpctypes.ErrPeerURLExist, lkerrors.InvalidArgument},
	"ErrPermissionDenied":                  {rpctypes.ErrPermissionDenied, lkerrors.PermissionDenied},
	"ErrPermissionNotGranted":              {rpctypes.ErrPermissionNotGranted, lkerrors.PermissionDenied},
	"ErrRequestTooLarge":                   {rpctypes.ErrRequestTooLarge, lkerrors.InvalidArgument},
	"ErrRoleAlreadyExist":                  {rpctypes.ErrRoleAlreadyExist, lkerrors.InvalidArgument},
	"ErrRoleEmpty":                         {rpctypes.ErrRoleEmpty, lkerrors.InvalidArgument},
	"ErrRoleNotFound":                      {rpctypes.ErrRoleNotFound, lkerrors.PermissionDenied},
	"ErrRoleNotGranted":                    {rpctypes.ErrRoleNotGranted, lkerrors.PermissionDenied},
	"ErrRootRoleNotExist":                  {rpctypes.ErrRootRoleNotExist, lkerrors.InvalidArgument},
	"ErrRootUserNotExist":                  {rpctypes.ErrRootUserNotExist, lkerrors.InvalidArgument},
	"ErrStopped":                           {rpctypes.ErrStopped, lkerrors.Unavailable},
	"ErrTimeout":                           {rpctypes.ErrTimeout, lkerrors.Unavailable},
	"ErrTimeoutDueToConnectionLost":        {rpctypes.ErrTimeoutDueToConnectionLost, lkerrors.Unavailable},
	"ErrTimeoutDueToLeaderFail":            {rpctypes.ErrTimeoutDueToLeaderFail, lkerrors.Unavailable},
	"ErrTimeoutWaitAppliedIndex":           {rpctypes.ErrTimeoutWaitAppliedIndex, lkerrors.Unavailable},
	"ErrTooManyLearners":                   {rpctypes.ErrTooManyLearners, lkerrors.InvalidArgument},
	"ErrTooManyOps":                        {rpctypes.ErrTooManyOps, lkerrors.InvalidArgument},
	"ErrTooManyRequests":                   {rpctypes.ErrTooManyRequests, lkerrors.RateLimited},
	"ErrUnhealthy":                         {rpctypes.ErrUnhealthy, lkerrors.Unavailable},
	"ErrUserAlreadyExist":                  {rpctypes.ErrUserAlreadyExist, lkerrors.InvalidArgument},
	"ErrUserEmpty":                         {rpctypes.ErrUserEmpty, lkerrors.InvalidArgument},
	"ErrUserNotFound":                      {rpctypes.ErrUserNotFound, lkerrors.PermissionDenied},
	"ErrValueProvided":                     {rpctypes.ErrValueProvided, lkerrors.InvalidArgument},
	"ErrWrongDowngradeVersionFormat":       {rpctypes.ErrWrongDowngradeVersionFormat, lkerrors.InvalidArgument}}

// rpctypesErrorNames parses rpctypes' source as the build sees it and
// returns the names of its exported Err variables.
func rpctypesErrorNames(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", "{{.Dir}}", "go.etcd.io/etcd/api/v3/v3rpc/rpctypes").Output()
	if err != nil {
		t.Fatalf("go list rpctypes: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join(dir, "error.go"), nil, 0)
	if err != nil {
		t.Fatalf("parse rpctypes: %v", err)
	}
	var names []string
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, spec := range gd.Specs {
			for _, n := range spec.(*ast.ValueSpec).Names {
				if n.IsExported() && strings.HasPrefix(n.Name, "Err") {
					names = append(names, n.Name)
				}
			}
		}
	}
	return names
}

func TestEveryRPCTypesErrorIsListed(t *testing.T) {
	names := rpctypesErrorNames(t)
	if len(names) < 100 {
		t.Fatalf("found %d error names in rpctypes, want at least 100: parser broken?", len(names))
	}
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
		if _, ok := etcdValues[n]; !ok {
			t.Errorf("rpctypes.%s is not classified by this test: add it here and to etcd.go", n)
		}
	}
	for n := range etcdValues {
		if !seen[n] {
			t.Errorf("etcdValues lists %s, which rpctypes no longer defines", n)
		}
	}
}

func TestClassifyEveryRPCTypesError(t *testing.T) {
	for name, tc := range etcdValues {
		t.Run(name, func(t *testing.T) {
			for _, form := range []struct {
				name string
				err  error
			}{
				{"direct", tc.err},
				{"wrapped", fmt.Errorf("renew lease 7: %w", tc.err)},
				{"client form", rpctypes.Error(tc.err)},
			} {
				got := lkerrors.Classify(form.err)
				if k := lkerrors.KindOf(got); k != tc.want {
					t.Errorf("%s: KindOf(Classify(%v)) = %v, want %v", form.name, form.err, k, tc.want)
				}
				if !stderrors.Is(got, tc.want.Sentinel()) {
					t.Errorf("%s: errors.Is(Classify(err), %v sentinel) = false, want true", form.name, tc.want)
				}
				if !stderrors.Is(got, form.err) {
					t.Errorf("%s: errors.Is(Classify(err), err) = false, want true", form.name)
				}
			}
		})
	}
}

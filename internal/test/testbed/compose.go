package testbed

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Images the compose file runs; docker/build.sh builds them.
var Images = []string{"leasekeeper/etcd:dev", "leasekeeper/leasekeeper:dev"}

// DockerAvailable returns nil when a Docker engine answers.
func DockerAvailable() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info").CombinedOutput(); err != nil {
		return fmt.Errorf("docker info: %w: %s", err, firstLine(out))
	}
	return nil
}

// Compose drives the project's docker-compose.yml under one project name,
// with whichever of "docker compose" and "docker-compose" the machine has.
type Compose struct {
	Project string
	file    string
	env     []string
	cmd     []string
}

// NewCompose returns a Compose for the compose file in dir, run with the
// extra environment env (the LK_* port settings).
func NewCompose(dir, project string, env []string) (*Compose, error) {
	c := &Compose{Project: project, file: filepath.Join(dir, "docker-compose.yml"), env: env}
	switch {
	case exec.Command("docker", "compose", "version").Run() == nil:
		c.cmd = []string{"docker", "compose"}
	case exec.Command("docker-compose", "version").Run() == nil:
		c.cmd = []string{"docker-compose"}
	default:
		return nil, fmt.Errorf("neither 'docker compose' nor 'docker-compose' works")
	}
	return c, nil
}

// Run runs a compose subcommand and returns its standard output.
func (c *Compose) Run(args ...string) (string, error) {
	argv := append(append(c.cmd[1:len(c.cmd):len(c.cmd)], "-p", c.Project, "-f", c.file), args...)
	cmd := exec.Command(c.cmd[0], argv...)
	cmd.Env = append(os.Environ(), c.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", strings.Join(c.cmd, " "), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Up starts every service in the background.
func (c *Compose) Up() error {
	_, err := c.Run("up", "-d")
	return err
}

// Down removes every container, network and volume of the project.
func (c *Compose) Down() error {
	_, err := c.Run("down", "-v", "--remove-orphans", "-t", "2")
	return err
}

// Container returns the ID of service's container.
func (c *Compose) Container(service string) (string, error) {
	out, err := c.Run("ps", "-q", service)
	id := strings.TrimSpace(out)
	if err == nil && id == "" {
		err = fmt.Errorf("no container for %s", service)
	}
	return id, err
}

// Network is the name of the project's private network.
func (c *Compose) Network() string { return c.Project + "_lk" }

// Docker runs a docker command.
func Docker(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

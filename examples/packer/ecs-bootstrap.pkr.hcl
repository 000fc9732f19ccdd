# Packer template (amazon-ebs) that bakes ecs-bootstrap into an ECS-optimized Amazon Linux 2023
# AMI. The two provisioners are the part to copy into an existing template.
#   packer init examples/packer && packer build -var rpm=target/packages/ecs-bootstrap-0.1.0-1.x86_64.rpm examples/packer
packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "rpm" {
  type        = string
  description = "The rpm made by packaging/build.sh."
  default     = "target/packages/ecs-bootstrap-0.1.0-1.x86_64.rpm"
}

data "amazon-parameterstore" "ecs_al2023" {
  name   = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
  region = var.region
}

source "amazon-ebs" "ecs_al2023" {
  region        = var.region
  source_ami    = data.amazon-parameterstore.ecs_al2023.value
  instance_type = "t3.small"
  ssh_username  = "ec2-user"
  ami_name      = "ecs-al2023-ecs-bootstrap-{{timestamp}}"
}

build {
  sources = ["source.amazon-ebs.ecs_al2023"]

  provisioner "file" {
    source      = var.rpm
    destination = "/tmp/ecs-bootstrap.rpm"
  }

  provisioner "shell" {
    inline = [
      "set -eu",
      "sudo dnf install -y /tmp/ecs-bootstrap.rpm",
      "rm -f /tmp/ecs-bootstrap.rpm",
      "sudo systemctl enable ecs-bootstrap-firewall.service ecs-bootstrap-config.service",
      "ecs-bootstrap --version",
      "sudo systemd-analyze verify /usr/lib/systemd/system/ecs-bootstrap-firewall.service /usr/lib/systemd/system/ecs-bootstrap-config.service",
    ]
  }
}

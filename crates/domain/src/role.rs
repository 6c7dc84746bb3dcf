//! Roles, what each may do, and operator accounts.

use crate::canonical_enum;
use crate::error::ValidationResult;
use crate::names::Role;
use crate::validate;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

canonical_enum! {
    /// Everything a route or command can require. Routes check exactly one.
    pub enum Permission (field = "permission") {
        UsersRead = "users.read", "Search and view users";
        UsersWrite = "users.write", "Create, update and import users";
        DevicesRead = "devices.read", "Search and view devices";
        DevicesImport = "devices.import", "Import devices into the inventory";
        /// Assign and issue devices to users (Device Management scope).
        DevicesIssue = "devices.issue", "Assign and issue devices";
        /// Terminate, declare incidents (Help Desk scope).
        DevicesLifecycle = "devices.lifecycle", "Terminate devices and declare incidents";
        /// Suspend and resume issued devices (Help Desk scope).
        DevicesSuspend = "devices.suspend", "Suspend and resume devices";
        /// Replace a device (which declares the old device's incident).
        DevicesReplace = "devices.replace", "Replace devices";
        DevicesRecycle = "devices.recycle", "Recycle devices";
        DevicesUnlock = "devices.unlock", "Unlock device PINs";
        /// Request Update, carry an update out, the renewal scan.
        DevicesUpdate = "devices.update", "Request and carry out device updates";
        PoliciesRead = "policies.read", "View device policies";
        PoliciesWrite = "policies.write", "Create and change device policies";
        SettingsRead = "settings.read", "View settings";
        SettingsWrite = "settings.write", "Change settings";
        PasskeyServicesRead = "passkey_services.read", "View Passkey-Enabled Services";
        PasskeyServicesWrite = "passkey_services.write", "Configure Passkey-Enabled Services";
        OperatorsManage = "operators.manage", "Manage operators and roles";
        TokensManage = "tokens.manage", "Create and revoke API tokens";
        AuditRead = "audit.read", "Read and verify the audit trail";
        /// Close a job that keeps failing (a passkey deletion Entra ID refuses).
        JobsManage = "jobs.manage", "Close stuck jobs";
        /// A user acting on their own devices in the portal.
        SelfService = "self_service", "Manage one's own devices";
    }
}

impl Role {
    /// The permission model. Administration has everything but self-service (an
    /// administrator has no devices of their own as such); the two operator scopes
    /// follow the product's Device Management and Help Desk scopes.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Administrator => p != SelfService,
            Role::IssuanceOperator => matches!(
                p,
                UsersRead
                    | DevicesRead
                    | DevicesImport
                    | DevicesIssue
                    | DevicesReplace
                    | DevicesRecycle
                    | DevicesUpdate
                    | PoliciesRead
                    | SettingsRead
                    | PasskeyServicesRead
            ),
            Role::HelpDesk => matches!(
                p,
                UsersRead
                    | DevicesRead
                    | DevicesLifecycle
                    | DevicesSuspend
                    | DevicesReplace
                    | DevicesRecycle
                    | DevicesUnlock
                    | DevicesUpdate
                    | PoliciesRead
                    | SettingsRead
            ),
            Role::User => p == SelfService,
        }
    }

    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(|p| self.allows(*p))
            .collect()
    }

    /// Operators work in the operator portal and API; users only in the self-service portal.
    pub fn is_operator(self) -> bool {
        self != Role::User
    }
}

/// An account that signs in: an operator, or a user's self-service account (linked
/// to the user by `user_id`). The password is an argon2 PHC string, never plaintext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Uuid,
    pub login: String,
    pub role: Role,
    #[serde(skip_serializing)]
    pub password_hash: Option<String>,
    pub must_change_password: bool,
    pub user_id: Option<Uuid>,
    pub disabled: bool,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("login", &self.login)
            .field("role", &self.role)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<argon2>"),
            )
            .field("must_change_password", &self.must_change_password)
            .field("user_id", &self.user_id)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl Account {
    pub fn validate(&self) -> ValidationResult {
        validate::login("login", &self.login)?;
        if self.role == Role::User && self.user_id.is_none() {
            return Err(crate::error::ValidationError::new(
                "user_required",
                "user_id",
                "a self-service account is linked to a user",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_matrix() {
        use Permission::*;
        for p in Permission::ALL {
            assert_eq!(Role::Administrator.allows(*p), *p != SelfService);
            assert_eq!(Role::User.allows(*p), *p == SelfService);
        }
        assert!(Role::IssuanceOperator.allows(DevicesIssue));
        assert!(!Role::IssuanceOperator.allows(DevicesLifecycle));
        assert!(!Role::IssuanceOperator.allows(DevicesSuspend));
        assert!(Role::IssuanceOperator.allows(DevicesReplace));
        assert!(Role::HelpDesk.allows(DevicesSuspend));
        assert!(Role::HelpDesk.allows(DevicesReplace));
        assert!(Role::HelpDesk.allows(DevicesLifecycle));
        assert!(!Role::IssuanceOperator.allows(SettingsWrite));
        assert!(Role::HelpDesk.allows(DevicesUnlock));
        assert!(Role::HelpDesk.allows(DevicesRecycle));
        assert!(!Role::HelpDesk.allows(DevicesIssue));
        assert!(!Role::HelpDesk.allows(TokensManage));
        // Only administrators configure.
        for w in [
            UsersWrite,
            PoliciesWrite,
            SettingsWrite,
            PasskeyServicesWrite,
            OperatorsManage,
            TokensManage,
            AuditRead,
        ] {
            for r in Role::ALL {
                assert_eq!(r.allows(w), *r == Role::Administrator, "{r} {w}");
            }
        }
    }

    #[test]
    fn debug_hides_hash() {
        let a = Account {
            id: Uuid::nil(),
            login: "admin".into(),
            role: Role::Administrator,
            password_hash: Some("$argon2id$v=19$secret".into()),
            must_change_password: true,
            user_id: None,
            disabled: false,
        };
        assert!(!format!("{a:?}").contains("argon2id"));
        assert!(!serde_json::to_string(&a).unwrap().contains("argon2id"));
        assert!(a.validate().is_ok());
    }
}

//! Closed vocabularies of the report (stored as their snake_case names).

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $( #[serde(rename = $s)] $variant ),+ }

        // By hand, not derived: the derive cannot read `serde(rename)`
        // through this macro's fragments and would publish the Rust names.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(Self::ALL.iter().copied()))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl $name {
            /// Every value's stored name, in declaration order.
            pub const ALL: &'static [&'static str] = &[$($s),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// How police became involved.
    InvolvementKind {
        DispatchedCall = "dispatched_call",
        OnView = "on_view",
        ResidentCall = "resident_call",
        Other = "other",
    }
);

string_enum!(
    FederalAgency {
        Ice = "ice",
        CbpBorderPatrol = "cbp_border_patrol",
        Hsi = "hsi",
        Fbi = "fbi",
        Dea = "dea",
        UsMarshals = "us_marshals",
        Other = "other",
    }
);

string_enum!(
    Identifiability {
        Identifiable = "identifiable",
        Masked = "masked",
    }
);

string_enum!(
    ForceType {
        Physical = "physical",
        Takedown = "takedown",
        ChemicalAgent = "chemical_agent",
        ImpactWeapon = "impact_weapon",
        ElectronicWeapon = "electronic_weapon",
        FirearmPointed = "firearm_pointed",
        FirearmDischarged = "firearm_discharged",
        Vehicle = "vehicle",
        Other = "other",
    }
);

string_enum!(
    PersonRole {
        Resident = "resident",
        Bystander = "bystander",
        Agent = "agent",
        Officer = "officer",
    }
);

string_enum!(
    /// Ordered from least to most severe.
    InjurySeverity {
        NoneVisible = "none_visible",
        Minor = "minor",
        Moderate = "moderate",
        Serious = "serious_bodily_injury",
        Death = "death",
    }
);

string_enum!(
    LifecycleState {
        Draft = "draft",
        Submitted = "submitted",
        Returned = "returned",
        Approved = "approved",
        Referred = "referred",
        Closed = "closed",
    }
);

string_enum!(
    /// The role a device's person holds, from enrollment.
    Role {
        Officer = "officer",
        Supervisor = "supervisor",
    }
);
